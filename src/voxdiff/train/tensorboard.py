"""TensorBoard event files beside a run's CSV logs and PNGs (when ``tensorboard`` is installed).

:class:`TensorBoardLog` mirrors what the trainer already writes: each row of ``train_log.csv``
and ``val_log.csv`` becomes scalars ``train/<column>`` and ``val/<column>`` (loss, lr, grad_norm,
sec_per_step, validation metrics), and each validation montage PNG an image ``val/montage``.
Without the package it does nothing, after one line saying how to enable it.
"""

from __future__ import annotations

import atexit
import math
from pathlib import Path
from typing import Any

__all__ = ["TensorBoardLog", "tensorboard_available"]

_PREFIX = {"train_log.csv": "train", "val_log.csv": "val"}


def tensorboard_available() -> bool:
    """True when torch's SummaryWriter can be used (the ``tensorboard`` package is importable)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Scalars and images of one run in ``log_dir``; every method is a no-op when disabled."""

    def __init__(self, writer: Any = None, log_dir: Path | None = None) -> None:
        self.writer = writer
        self.log_dir = log_dir
        if writer is not None:
            atexit.register(self.close)  # a run that dies still leaves its events flushed

    @classmethod
    def open(cls, log_dir: str | Path, *, start_step: int = 0, quiet: bool = False) -> "TensorBoardLog":
        """Start logging into ``log_dir`` (rank 0 calls this; other ranks should not).

        Events an earlier run left there after ``start_step`` (a resumed run's future, or a
        replaced run) are hidden by TensorBoard's purge marker. Prints how to view the logs,
        or how to enable them, unless ``quiet``.
        """
        log_dir = Path(log_dir)
        if not tensorboard_available():
            if not quiet:
                print("TensorBoard logs are off: pip install 'voxdiff[tensorboard]' to write them")
            return cls()
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(log_dir), purge_step=int(start_step) + 1, flush_secs=30)
        if not quiet:
            runs = log_dir.parent.parent if log_dir.parent.parent != Path("") else log_dir.parent
            print(f"TensorBoard logs in {log_dir}: view them with  tensorboard --logdir {runs}")
        return cls(writer, log_dir)

    @property
    def enabled(self) -> bool:
        """Whether events are being written."""
        return self.writer is not None

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """Each finite number of ``values`` as ``prefix/name`` at ``step`` (others are skipped)."""
        if self.writer is None:
            return
        for name, value in values.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", float(value), int(step))

    def log_row(self, csv_name: str, row: dict[str, Any]) -> None:
        """The scalars of one row the trainer appends to ``csv_name`` (its ``step`` column is the step)."""
        if self.writer is not None and csv_name in _PREFIX:
            self.scalars(_PREFIX[csv_name], row, int(row["step"]))

    def image(self, tag: str, png: str | Path, step: int) -> None:
        """A PNG file (e.g. the validation montage) as an image at ``step``."""
        if self.writer is None:
            return
        import matplotlib.image as mpimg
        import numpy as np

        img = mpimg.imread(str(png))
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        self.writer.add_image(tag, img[..., :3] if img.ndim == 3 else img, int(step),
                              dataformats="HWC" if img.ndim == 3 else "HW")
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
