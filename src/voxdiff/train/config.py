"""Training configuration: YAML file + ``key.sub=value`` overrides over documented defaults.

The merged configuration is stored in every checkpoint, so a model can be rebuilt and a run
resumed from the checkpoint alone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from voxdiff.errors import VoxdiffError

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
    },
    "inference": {
        "steps": 10,
        "eta": 0.0,
        "sw_roi": None,            # sliding-window patch size, None = whole volume
        "sw_overlap": 0.25,
        "max_voxels": 16_777_216,  # above this many padded voxels, use sliding windows
    },
}


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base``.

    A section whose ``kind`` differs from the base's (e.g. a ``monai`` backbone over the
    default ``unet``) replaces it instead, so one kind's defaults never leak into another's.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        if (isinstance(value, dict) and isinstance(out.get(key), dict)
                and value.get("kind", out[key].get("kind")) == out[key].get("kind")):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML: numbers, lists, booleans, null)."""
    if "=" not in text:
        raise VoxdiffError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise VoxdiffError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise VoxdiffError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return keys, value


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a copy of ``cfg``."""
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        node = cfg
        for k in keys[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise VoxdiffError(f"override '{text}': '{k}' is not a section")
            node = node[k]
        node[keys[-1]] = value
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """Load a YAML config (or none), merge it over :data:`DEFAULTS`, apply overrides.

    Relative data paths in the file are resolved against the config file's folder.
    """
    user: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise VoxdiffError(f"{path}: config file not found")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise VoxdiffError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from exc
        if not isinstance(user, dict):
            raise VoxdiffError(f"{path}: a config must be a mapping of sections")
        for key in ("manifest", "folder"):
            value = user.get("data", {}).get(key)
            if value and not Path(value).is_absolute():
                cand = (path.parent / value)
                if cand.exists() or not Path(value).exists():
                    user["data"][key] = str(cand.resolve())
    cfg = deep_merge(DEFAULTS, user)
    cfg = apply_overrides(cfg, overrides or [])
    validate_config(cfg)
    return cfg


def validate_config(cfg: dict) -> None:
    """Refuse configs with impossible values, with a message naming the key."""
    tr = cfg["train"]
    for key in ("steps", "batch_size", "grad_accum"):
        if not isinstance(tr[key], int) or tr[key] < 1:
            raise VoxdiffError(f"config train.{key} must be a positive integer, got {tr[key]!r}")
    if tr["optimizer"] not in ("adamw", "sgd"):
        raise VoxdiffError(f"config train.optimizer must be adamw or sgd, got {tr['optimizer']!r}")
    if tr["precision"] not in ("fp32", "bf16", "fp16"):
        raise VoxdiffError(f"config train.precision must be fp32, bf16 or fp16, got {tr['precision']!r}")
    if not 0.0 <= float(tr["ema_decay"]) < 1.0:
        raise VoxdiffError(f"config train.ema_decay must be in [0, 1), got {tr['ema_decay']!r}")
    if float(tr["lr"]) <= 0:
        raise VoxdiffError(f"config train.lr must be positive, got {tr['lr']!r}")


def dump_config(cfg: dict) -> str:
    """The config as YAML text (saved beside checkpoints)."""
    return yaml.safe_dump(cfg, sort_keys=False)
