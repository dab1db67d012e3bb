"""Configuration plumbing every layer may use: YAML files, ``key.sub=value`` overrides, merging,
validation against a schema (:mod:`voxdiff.config.schema`) and runtime checks of ``--device`` /
``--seed`` (:mod:`voxdiff.config.runtime`).

This package sits at the bottom of the layering (it imports nothing from voxdiff but
:mod:`voxdiff.errors`), so tasks, the trainer, checkpoints and the CLI share one definition.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from voxdiff.config.runtime import SEED_LIMIT, check_device, check_seed
from voxdiff.config.schema import (RESUME_MUTABLE, ConfigError, config_difference, register_model_schema,
                                   validate_config)
from voxdiff.errors import VoxdiffError

__all__ = [
    "deep_merge", "parse_override", "apply_overrides", "load_yaml", "dump_config",
    "validate_config", "ConfigError", "register_model_schema", "config_difference", "RESUME_MUTABLE",
    "check_device", "check_seed", "SEED_LIMIT",
]


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
        raise VoxdiffError(f"override '{text}': value is not valid YAML ({' '.join(str(exc).split())})") from exc
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


def load_yaml(path: str | Path) -> dict:
    """A YAML file holding a mapping (``{}`` when empty); a missing or broken file is one clear error."""
    path = Path(path)
    if not path.exists():
        raise VoxdiffError(f"{path}: config file not found")
    if path.is_dir():
        raise VoxdiffError(f"{path}: is a folder, expected a YAML config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError as exc:
        raise VoxdiffError(f"{path}: not a text (YAML) file") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise VoxdiffError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from exc
    if not isinstance(data, dict):
        raise VoxdiffError(f"{path}: a config must be a mapping of sections")
    return data


def dump_config(cfg: dict) -> str:
    """The config as YAML text (saved beside checkpoints)."""
    return yaml.safe_dump(cfg, sort_keys=False)
