"""voxdiff: diffusion models that are practical on whole 3D medical volumes."""

from voxdiff.errors import VoxdiffError

__version__ = "0.1.0"
__all__ = ["VoxdiffError", "__version__"]
