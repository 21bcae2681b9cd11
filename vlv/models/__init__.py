"""Model library: the toy stand-ins, the VLV encoder and the frozen decoder wrappers."""

from .pixel_autoencoder import PixelUnshuffleAutoencoder

__all__ = ["PixelUnshuffleAutoencoder"]
