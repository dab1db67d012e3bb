"""Allows ``python -m voxdiff`` (and ``torchrun -m voxdiff``)."""

from voxdiff.cli import main

if __name__ == "__main__":
    main()
