"""voxdiff: diffusion models that are practical on whole 3D medical volumes."""

from voxdiff.errors import VoxdiffError

__version__ = "0.1.0"
__all__ = ["VoxdiffError", "__version__", "load_pipeline", "Pipeline", "as_volume"]


def __getattr__(name: str):
    # ``from voxdiff import load_pipeline`` without importing torch for ``import voxdiff`` itself.
    if name in ("load_pipeline", "Pipeline", "as_volume"):
        import voxdiff.pipelines as pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'voxdiff' has no attribute {name!r}")
