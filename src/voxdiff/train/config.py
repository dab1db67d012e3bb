"""Training configuration: YAML file + ``key.sub=value`` overrides over documented defaults.

The merged configuration is stored in every checkpoint, so a model can be rebuilt and a run
resumed from the checkpoint alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voxdiff.errors import VoxdiffError

# Re-exported: these moved to voxdiff.config, the bottom layer every package may import.
from voxdiff.config import (apply_overrides, deep_merge, dump_config, load_yaml, parse_override,  # noqa: F401
                            validate_config as _validate)
import voxdiff.tasks  # noqa: E402,F401  (registers every task's model schema before any validation)

DEFAULTS: dict[str, Any] = {
    "task": "translation",
    "seed": 0,
    "data": {
        "manifest": None,          # CSV/JSON manifest (case + one column per role)
        "folder": None,            # or a folder <root>/<role>/<case>.nii.gz
        "roles": {},               # task role -> manifest column (default: same name)
        "normalization": {},       # role -> spec (see voxdiff.data)
        "crop_size": 64,
        "samples_per_volume": 1,
        "val_fraction": 0.1,
        "test_fraction": 0.0,
        "split_seed": 0,
        "val_cases": 2,            # whole volumes validated at each validation
        "foreground_role": None,
        "foreground_fraction": 0.0,
        "downsample": 1,           # integer block-average factor applied after loading
    },
    "model": {},
    "train": {
        "steps": 1000,
        "batch_size": 1,
        "grad_accum": 1,
        "optimizer": "adamw",      # adamw | sgd (momentum 0.9)
        "lr": 2e-4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "grad_clip": 1.0,
        "warmup_steps": 0,
        "ema_decay": 0.999,
        "precision": "fp32",       # fp32 | bf16 | fp16
        "log_every": 10,
        "val_every": 500,
        "ckpt_every": 500,
        "keep_checkpoints": 2,
        "num_workers": 0,
        "out_dir": "runs/voxdiff",
        "device": "auto",
        "max_minutes": None,       # stop (and checkpoint) after this wall time
        "init_from": None,         # start from these weights (checkpoint or pretrained:NAME): fine-tuning
    },
    "inference": {
        "steps": 10,
        "eta": 0.0,
        "sw_roi": None,            # sliding-window patch size, None = whole volume
        "sw_overlap": 0.25,
        "max_voxels": 16_777_216,  # above this many padded voxels, use sliding windows
    },
}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """Load a YAML config (or none), merge it over :data:`DEFAULTS`, apply overrides, validate.

    A file may start from another one with ``extends: other.yaml`` (relative to its own folder;
    chains allowed, cycles refused): the base is read first and this file's keys are merged over
    it, so a variant states only what it changes. Relative data paths are resolved against the
    folder of the file that names them. The result is checked against :mod:`voxdiff.config.schema`
    (unknown keys, types, ranges), so no bad value reaches a constructor.
    """
    user = _read_config_file(Path(path)) if path is not None else {}
    cfg = deep_merge(DEFAULTS, user)
    cfg = apply_overrides(cfg, overrides or [])
    return validate_config(cfg)


def _read_config_file(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """One config file with its ``extends`` chain merged in and its data paths made absolute."""
    user = load_yaml(path)
    data = user.get("data")
    for key in ("manifest", "folder"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            cand = (path.parent / value)
            if cand.exists() or not Path(value).exists():
                user["data"][key] = str(cand.resolve())
    if "extends" not in user:
        return user
    base_name = user.pop("extends")
    if not isinstance(base_name, str) or not base_name.strip():
        raise VoxdiffError(f"{path}: 'extends' must name a YAML config file, got {base_name!r}")
    base_path = (path.parent / base_name).resolve()
    here = path.resolve()
    if base_path in chain + (here,):
        cycle = " -> ".join(p.name for p in chain + (here, base_path))
        raise VoxdiffError(f"{path}: 'extends' makes a cycle ({cycle})")
    if not base_path.exists():
        raise VoxdiffError(f"{path}: extends '{base_name}', which is not found at {base_path}")
    base = _read_config_file(base_path, chain + (here,))
    return deep_merge(base, user)


def validate_config(cfg: dict, where: str = "config") -> dict:
    """Check ``cfg`` against the schema (see :func:`voxdiff.config.validate_config`); returns it normalised."""
    return _validate(cfg, where)


def with_defaults(cfg: dict) -> dict:
    """``cfg`` (e.g. a checkpoint's, from an older version) over :data:`DEFAULTS`."""
    return deep_merge(DEFAULTS, cfg)
