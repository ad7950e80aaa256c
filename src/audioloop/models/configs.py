"""The full-size LTX-2.3 architecture, as diffusers' conversion script configures it for 2.3.

One source for both the tiny test model (these configs with toy widths, so it keeps every 2.3 flag and the
real compression factors) and the GPU benchmarks (these configs as they are, with random weights).
"""

TRANSFORMER_2_3 = dict(
    in_channels=128,
    out_channels=128,
    num_attention_heads=32,
    attention_head_dim=128,
    cross_attention_dim=4096,
    audio_in_channels=128,
    audio_out_channels=128,
    audio_num_attention_heads=32,
    audio_attention_head_dim=64,
    audio_cross_attention_dim=2048,
    num_layers=48,
    caption_channels=3840,
    gated_attn=True,
    cross_attn_mod=True,
    audio_gated_attn=True,
    audio_cross_attn_mod=True,
    rope_type="split",
    rope_double_precision=True,
    use_prompt_embeddings=False,
    perturbed_attn=True,
)


VIDEO_VAE_2_3 = dict(
    latent_channels=128,
    block_out_channels=(256, 512, 1024, 1024),
    layers_per_block=(4, 6, 4, 2, 2),
    decoder_block_out_channels=(256, 512, 512, 1024),
    decoder_layers_per_block=(4, 6, 4, 2, 2),
    spatio_temporal_scaling=(True, True, True, True),
    decoder_spatio_temporal_scaling=(True, True, True, True),
    decoder_inject_noise=(False, False, False, False, False),
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
    upsample_residual=(False, False, False, False),
    upsample_factor=(2, 2, 1, 2),
    patch_size=4,
    encoder_causal=True,
    decoder_causal=False,
    decoder_spatial_padding_mode="zeros",
    spatial_compression_ratio=32,
    temporal_compression_ratio=8,
)


CONNECTORS_2_3 = dict(
    caption_channels=3840,
    text_proj_in_factor=49,
    video_connector_num_attention_heads=32,
    video_connector_attention_head_dim=128,
    video_connector_num_layers=8,
    video_connector_num_learnable_registers=128,
    video_gated_attn=True,
    audio_connector_num_attention_heads=32,
    audio_connector_attention_head_dim=64,
    audio_connector_num_layers=8,
    audio_connector_num_learnable_registers=128,
    audio_gated_attn=True,
    rope_type="split",
    per_modality_projections=True,
    video_hidden_dim=4096,
    audio_hidden_dim=2048,
    proj_bias=True,
)
