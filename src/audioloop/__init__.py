"""audioloop: one song, one image and a prompt schedule in, a lip-synced LTX-2.3 music video out."""

__version__ = "0.1.0"
