"""Backbones: time-conditioned 3D UNet, invertible 3D UNet, puzzle wrapper."""

from voxdiff.nets.embeddings import TimestepEmbedding, sinusoidal_embedding
from voxdiff.nets.puzzle import PuzzleNet
from voxdiff.nets.unet import UNet3D

__all__ = ["TimestepEmbedding", "sinusoidal_embedding"]
__all__ += ["PuzzleNet", "UNet3D"]
from voxdiff.nets.invertible import InvertibleUNet  # noqa: E402
from voxdiff.nets.memory import saved_activation_bytes  # noqa: E402

__all__ += ["InvertibleUNet", "saved_activation_bytes"]
