"""Tensor operations on volumes: pixel puzzling (space-to-channel) and padding to a multiple."""

from voxdiff.ops.puzzle import crop_to, pad_to_multiple, puzzle, unpuzzle

__all__ = ["crop_to", "pad_to_multiple", "puzzle", "unpuzzle"]
