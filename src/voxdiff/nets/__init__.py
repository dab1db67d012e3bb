"""Backbones: time-conditioned 3D UNet, invertible 3D UNet, puzzle wrapper."""

from voxdiff.nets.embeddings import TimestepEmbedding, sinusoidal_embedding

__all__ = ["TimestepEmbedding", "sinusoidal_embedding"]
