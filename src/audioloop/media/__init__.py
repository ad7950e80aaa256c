"""Audio, image and video I/O: no models here."""
