"""Model loading, the tiny test model, text encoding and latent encoding."""
