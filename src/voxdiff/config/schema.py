"""The config schema: one declarative spec per section, process kind, backbone kind and task.

A spec checks a value and returns it normalised (``5e-4``, which YAML 1.1 reads as a string,
becomes a float); every problem is one :class:`ConfigError` naming the key path, the bad value
and what is expected, e.g. ``config train.lr: expected a number > 0, got 'fast'`` or
``config model.gradient_loss_wieght: unknown key (did you mean gradient_loss_weight?)``.
Booleans are never numbers, numbers must be finite, integers must be integers.

Missing keys are allowed (the trainer's and the tasks' defaults fill them), except where a
section marks a key ``required`` (``model.num_classes`` of the segmentation tasks). The
choices of process and backbone options mirror the constructors in :mod:`voxdiff.diffusion`
and :mod:`voxdiff.nets` (a test checks they agree); this module imports neither, so that it
stays at the bottom of the layering.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from voxdiff.config.runtime import SEED_LIMIT, check_device_syntax
from voxdiff.errors import VoxdiffError

__all__ = ["ConfigError", "validate_config", "register_model_schema", "model_schema", "config_difference",
           "RESUME_MUTABLE", "Int", "Num", "Bool", "Str", "Device", "Seq", "Either", "Opt", "Map", "Section", "Kinds",
           "diffusion_model", "CONDITIONAL_MODEL_KEYS", "BACKBONES", "PROCESS", "TRIPLE", "FRACTION"]


class ConfigError(VoxdiffError):
    """A config value that the schema refuses; ``key`` is its dotted path."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{where} {key}: {problem}" if key else f"{where}: {problem}")


class _Fail(Exception):
    """Raised inside specs; :func:`validate_config` turns it into a :class:`ConfigError`."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key, self.problem = key, problem


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} (a boolean)" if isinstance(value, bool) else text


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class Spec:
    """Base of every spec: ``check(value, path, root)`` returns the normalised value or raises."""

    def check(self, value: Any, path: str, root: Mapping) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def bad(self, value: Any, path: str) -> _Fail:
        """The failure "expected <description>, got <value>"."""
        return _Fail(path, f"expected {self.describe()}, got {_show(value)}")


def _bounds(lo, hi, lo_open=False, hi_open=False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"> {lo:g}" if lo_open else f">= {lo:g}")
    if hi is not None:
        parts.append(f"< {hi:g}" if hi_open else f"<= {hi:g}")
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return " ".join(parts)


@dataclass
class Int(Spec):
    """An integer (not a bool, not 4.0) within ``lo .. hi`` (inclusive)."""

    lo: int | None = None
    hi: int | None = None

    def describe(self) -> str:
        if self.lo == 1 and self.hi is None:
            return "a positive integer"
        if self.lo is not None and self.hi is not None:
            return f"an integer in {self.lo}..{self.hi}"
        return f"an integer {_bounds(self.lo, self.hi)}".rstrip()

    def check(self, value, path, root):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(value, path)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise self.bad(value, path)
        return value


_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class Num(Spec):
    """A finite real number (ints accepted, bools not; ``"5e-4"`` text converted) within bounds."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        if self.lo == 0 and self.lo_open and self.hi is None:
            return "a number > 0"
        return f"a finite number {_bounds(self.lo, self.hi, self.lo_open, self.hi_open)}".rstrip()

    def check(self, value, path, root):
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.bad(value, path)
        x = float(value)
        if not math.isfinite(x):
            raise self.bad(value, path)
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            raise self.bad(value, path)
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            raise self.bad(value, path)
        return value


@dataclass
class Bool(Spec):
    """``true`` or ``false``."""

    def describe(self) -> str:
        return "true or false"

    def check(self, value, path, root):
        if not isinstance(value, bool):
            raise self.bad(value, path)
        return value


@dataclass
class Str(Spec):
    """A string, optionally one of ``choices`` (a wrong one gets the closest as a suggestion)."""

    choices: tuple[str, ...] | None = None
    path_like: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return "a path" if self.path_like else "a string"

    def check(self, value, path, root):
        if self.path_like and isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise self.bad(value, path)
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise _Fail(path, f"expected one of {', '.join(self.choices)}, got {value!r}{hint}")
        return value


@dataclass
class Device(Spec):
    """A device name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (existence is checked at run time)."""

    def describe(self) -> str:
        return "auto, cpu, cuda or cuda:N (N = GPU index)"

    def check(self, value, path, root):
        try:
            return check_device_syntax(value)
        except VoxdiffError:
            raise self.bad(value, path) from None


@dataclass
class Opt(Spec):
    """``spec`` or null."""

    spec: Spec

    def describe(self) -> str:
        return f"{self.spec.describe()} or null"

    def check(self, value, path, root):
        return None if value is None else self.spec.check(value, path, root)


@dataclass
class Seq(Spec):
    """A list of ``item`` (``n`` long, or at least ``min_len``)."""

    item: Spec
    n: int | None = None
    min_len: int = 0

    def describe(self) -> str:
        head = f"a list of {self.n}" if self.n else ("a non-empty list of" if self.min_len else "a list of")
        return f"{head} {_plural(self.item.describe())}"

    def check(self, value, path, root):
        if not isinstance(value, (list, tuple)):
            raise self.bad(value, path)
        if (self.n is not None and len(value) != self.n) or len(value) < self.min_len:
            raise self.bad(value, path)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(self.item.check(v, f"{path}[{i}]", root))
            except _Fail as exc:
                # The item's own message names the item; the list's description says the rest.
                raise _Fail(path, f"expected {self.describe()}, got {_show(value)}") from exc
        return out


def _plural(text: str) -> str:
    return (text.replace("a positive integer", "positive integers").replace("an integer", "integers")
            .replace("a finite number", "finite numbers").replace("a number", "numbers")
            .replace("true or false", "booleans").replace("a string", "strings"))


@dataclass
class Either(Spec):
    """The first of ``specs`` that accepts the value."""

    specs: tuple[Spec, ...]

    def describe(self) -> str:
        return " or ".join(s.describe() for s in self.specs)

    def check(self, value, path, root):
        for spec in self.specs:
            try:
                return spec.check(value, path, root)
            except _Fail:
                continue
        raise self.bad(value, path)


@dataclass
class Map(Spec):
    """A mapping with any string keys (roles, ...) whose values follow ``value``."""

    value: Spec

    def describe(self) -> str:
        return "a mapping"

    def check(self, value, path, root):
        if not isinstance(value, Mapping):
            raise self.bad(value, path)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Fail(_join(path, k), f"keys must be strings, got {_show(k)}")
            out[k] = self.value.check(v, _join(path, k), root)
        return out


@dataclass
class Section(Spec):
    """A mapping with known keys only: an unknown key is refused with the closest valid name."""

    fields: dict[str, Spec]
    required: tuple[str, ...] = ()
    rule: Callable[[dict], str | None] | None = None   # a cross-key check: a problem, or None
    rule_key: str = ""                                 # the key the rule's message names

    def describe(self) -> str:
        return "a mapping (section)"

    def check(self, value, path, root):
        if not isinstance(value, Mapping):
            raise self.bad(value, path)
        out = {}
        for k, v in value.items():
            if k not in self.fields:
                close = difflib.get_close_matches(str(k), list(self.fields), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(self.fields)}"
                raise _Fail(_join(path, k), f"unknown key ({hint})")
            out[k] = self.fields[k].check(v, _join(path, k), root)
        for k in self.required:
            if k not in out:
                raise _Fail(_join(path, k), f"is required ({self.fields[k].describe()})")
        if self.rule is not None:
            problem = self.rule(out)
            if problem:
                raise _Fail(_join(path, self.rule_key) if self.rule_key else path, problem)
        return out


@dataclass
class Kinds(Spec):
    """A section whose keys depend on its ``key`` value (``kind``, ``mode``); ``default`` when absent."""

    variants: dict[str, Section]
    key: str = "kind"
    default: str | None = None

    def describe(self) -> str:
        return f"a mapping with {self.key}: {' | '.join(self.variants)}"

    def check(self, value, path, root):
        if not isinstance(value, Mapping):
            raise self.bad(value, path)
        kind = value.get(self.key, self.default)
        if kind is None:
            raise _Fail(_join(path, self.key), f"is required (one of {', '.join(self.variants)})")
        if not isinstance(kind, str) or kind not in self.variants:
            close = difflib.get_close_matches(str(kind), list(self.variants), n=1) if isinstance(kind, str) else []
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise _Fail(_join(path, self.key), f"expected one of {', '.join(self.variants)}, got {_show(kind)}{hint}")
        section = self.variants[kind]
        fields = {self.key: Str(tuple(self.variants)), **section.fields}
        return Section(fields, section.required, section.rule, section.rule_key).check(value, path, root)


# --------------------------------------------------------------------------------------- sections
def _positive() -> Num:
    return Num(0, None, lo_open=True)


FRACTION = Num(0.0, 1.0)
TRIPLE = Either((Int(1), Seq(Int(1), n=3)))

# Choices the constructors accept (tests/config/test_config_schema.py checks them against the code).
BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
DDPM_PREDICTION_TYPES = ("epsilon", "x0", "v")
BRIDGE_SCHEDULES = ("linear", "sin", "cosine")
BRIDGE_PREDICTION_TYPES = ("x0", "residual", "epsilon")
COUPLINGS = ("additive", "affine")

PROCESS = {
    "ddpm": Section({
        "num_train_timesteps": Int(1), "beta_schedule": Str(BETA_SCHEDULES),
        "prediction_type": Str(DDPM_PREDICTION_TYPES), "clip_sample": Opt(Either((Bool(), _positive()))),
        "clip_range": Opt(_positive()),
        # The default sampler and its eta (the diffusion package checks the sampler's name).
        "sampler": Str(), "eta": Opt(Num(0.0)),
        "beta_start": Num(0.0, 1.0, lo_open=True, hi_open=True), "beta_end": Num(0.0, 1.0, lo_open=True, hi_open=True),
        "cosine_s": Num(0.0),
    }, rule=lambda s: (f"must be below beta_end ({s.get('beta_end', 0.02):g}), got {s.get('beta_start', 1e-4):g}"
                       if s.get("beta_start", 1e-4) >= s.get("beta_end", 0.02) else None), rule_key="beta_start"),
    "bridge": Section({
        "num_train_timesteps": Int(1), "schedule": Str(BRIDGE_SCHEDULES), "noise_scale": Num(0.0),
        "prediction_type": Str(BRIDGE_PREDICTION_TYPES), "eta": Num(0.0, 1.0), "clip_sample": Opt(_positive()),
    }),
}

_LEVELS = Seq(Int(0))
BACKBONES = {
    "unet": Section({
        "base_channels": Int(1), "channel_mults": Seq(Int(1), min_len=1), "num_res_blocks": Int(1),
        "attention_levels": _LEVELS, "attention_heads": Int(1), "norm_groups": Int(1),
        "dropout": Num(0.0, 1.0, hi_open=True), "upsample": Str(("nearest", "transpose")),
        "gradient_checkpointing": Bool(), "time_conditioned": Bool(),
    }),
    "invertible": Section({
        "base_channels": Int(2), "levels": Int(1), "blocks_per_level": Int(1), "attention_levels": _LEVELS,
        "coupling": Str(COUPLINGS), "memory_saving": Bool(), "temb_dim": Opt(Int(1)), "norm_groups": Int(1),
        "attention_heads": Int(1), "skip_fraction": Num(0.0, 1.0, lo_open=True, hi_open=True),
        "dropout": Num(0.0, 1.0, hi_open=True), "affine_scale_bound": _positive(), "zero_init": Bool(),
        "preserve_rng_state": Bool(),
    }),
    "monai": Section({
        "channels": Seq(Int(1), min_len=1), "num_res_blocks": Int(1), "attention_levels": Seq(Bool()),
        "norm_num_groups": Int(1), "num_head_channels": Int(1), "use_flash_attention": Bool(),
        "gradient_checkpointing": Bool(),
    }),
}


def diffusion_model(default_process: str, **extra: Spec) -> Section:
    """The ``model`` section of a diffusion task: process and backbone by kind, puzzle factor, ``extra`` keys."""
    fields = {"process": Kinds(PROCESS, default=default_process), "backbone": Kinds(BACKBONES, default="unet"),
              "puzzle_factor": TRIPLE, **extra}
    return Section(fields, required=tuple(k for k in ("num_classes",) if k in extra))


#: Model keys of the conditional DDPM tasks (baselines, synthesis, PD-DDPM) beyond process/backbone/puzzle.
CONDITIONAL_MODEL_KEYS: dict[str, Spec] = {
    "coords": Bool(), "cond_channels_per_role": Int(1),
    # PD-DDPM: a share focus_fraction of training timesteps drawn from 0..focus_max.
    "train_timesteps": Opt(Section({"focus_max": Int(0), "focus_fraction": FRACTION}, required=("focus_max",))),
}
#: Task name -> its ``model`` section schema; each task declares its own (``Task.model_schema``) and
#: :mod:`voxdiff.tasks` registers them all when it is imported.
_MODELS: dict[str, Spec] = {}


def register_model_schema(task: str, spec: Spec) -> None:
    """Make ``spec`` the ``model`` section schema of ``task`` (called by :mod:`voxdiff.tasks` for every task)."""
    _MODELS[task] = spec


def model_schema(task: str) -> Spec:
    """The ``model`` section schema of ``task``."""
    return _MODELS[task]


def _percentile_rule(s: dict) -> str | None:
    lo, hi = s.get("lower", 0.5), s.get("upper", 99.5)
    return f"must be below upper ({hi:g}), got {lo:g}" if lo >= hi else None


def _range_rule(s: dict) -> str | None:
    return f"must be above lo ({s['lo']:g}), got {s['hi']:g}" if s["hi"] <= s["lo"] else None


_NORM_COMMON = {"per": Str(("case", "dataset")), "nonzero": Bool(), "clip": Bool()}
NORMALIZATION = Kinds({
    "percentile": Section({**_NORM_COMMON, "lower": Num(0.0, 100.0), "upper": Num(0.0, 100.0)},
                          rule=_percentile_rule, rule_key="lower"),
    "zscore": Section(dict(_NORM_COMMON)),
    "window": Section({**_NORM_COMMON, "center": Num(), "width": _positive()}, required=("center", "width")),
    "range": Section({**_NORM_COMMON, "lo": Num(), "hi": Num()}, required=("lo", "hi"), rule=_range_rule,
                     rule_key="hi"),
    "none": Section(dict(_NORM_COMMON)),
    "same_as": Section({**_NORM_COMMON, "role": Str()}, required=("role",)),
}, key="mode", default="percentile")

_PATH = Opt(Str(path_like=True))
DATA = Section({
    "manifest": _PATH, "folder": _PATH, "roles": Map(Either((Str(), Seq(Str(), min_len=1)))), "normalization": Map(NORMALIZATION),
    "crop_size": Opt(TRIPLE), "samples_per_volume": Int(1), "val_fraction": FRACTION, "test_fraction": FRACTION,
    "split_seed": Int(0, SEED_LIMIT - 1), "val_cases": Int(0), "foreground_role": Opt(Str()),
    "foreground_fraction": FRACTION, "downsample": Int(1),
    # Scalar conditions of the model (model.conditions): a manifest column, or a value per alternative column.
    "conditions": Map(Either((Str(), Map(Num())))),
    # How the alternative columns of several roles combine: every combination, or position by position.
    "alternatives": Str(("product", "zip")),
}, rule=lambda s: (f"val_fraction + test_fraction must be below 1, got {s.get('val_fraction', 0.1):g} + "
                   f"{s.get('test_fraction', 0.0):g}" if s.get("val_fraction", 0.1) + s.get("test_fraction", 0.0) >= 1 else None), rule_key="val_fraction")

TRAIN = Section({
    "steps": Int(1), "batch_size": Int(1), "grad_accum": Int(1), "optimizer": Str(("adamw", "sgd")),
    "lr": _positive(), "weight_decay": Num(0.0), "betas": Seq(Num(0.0, 1.0, hi_open=True), n=2),
    "grad_clip": Opt(Num(0.0)), "warmup_steps": Int(0), "ema_decay": Num(0.0, 1.0, hi_open=True),
    "precision": Str(("fp32", "bf16", "fp16")), "log_every": Int(1), "val_every": Int(0), "ckpt_every": Int(1),
    "keep_checkpoints": Int(0), "num_workers": Int(0), "out_dir": Str(path_like=True),
    "device": Device(), "max_minutes": Opt(_positive()), "init_from": Opt(Str()),
})

INFERENCE = Section({
    "steps": Int(1), "eta": Opt(Num(0.0)), "sampler": Opt(Str()), "sw_roi": Opt(TRIPLE),
    "sw_overlap": Num(0.0, 1.0, hi_open=True), "max_voxels": Int(1), "start_step": Opt(Int(0)),
})


@dataclass
class _Model(Spec):
    """The ``model`` section, whose schema is the task's."""

    def describe(self) -> str:
        return "a mapping (section)"

    def check(self, value, path, root):
        task = root.get("task", "translation")
        return _MODELS[task].check(value, path, root) if task in _MODELS else value


TOP = Section({
    "task": Str(), "seed": Int(0, SEED_LIMIT - 1), "data": DATA, "model": _Model(), "train": TRAIN,
    "inference": INFERENCE,
})


def validate_config(cfg: Any, where: str = "config") -> dict:
    """Check a whole config against the schema; return it normalised (a new dict).

    ``where`` starts every message (``config``, or e.g. ``run/last.pt: stored config``).
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(where, "", f"a config must be a mapping of sections, got {_show(cfg)}")
    task = cfg.get("task", "translation")
    if not isinstance(task, str) or task not in _MODELS:
        close = difflib.get_close_matches(str(task), list(_MODELS), n=1) if isinstance(task, str) else []
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(sorted(_MODELS))})"
        raise ConfigError(where, "task", f"unknown task {_show(task)}{hint}")
    try:
        return TOP.check(cfg, "", cfg)
    except _Fail as exc:
        raise ConfigError(where, exc.key, exc.problem) from None


# ------------------------------------------------------------------------------------ resume rules
#: Config keys a resumed run may change: they decide how long it runs, how often it logs,
#: validates and checkpoints, where it writes and on what it runs, never what it computes.
#: The whole ``inference`` section may change (it only drives validation sampling), and so may
#: ``data.val_cases`` (how many validation volumes are scored). ``data.manifest`` / ``data.folder``
#: may move (data copied elsewhere) if the cases and their split stay the same: the trainer checks
#: the split against the checkpoint's. ``train.steps`` must not fall below the checkpoint's step.
#: Everything else (seed, task, data, normalisation, crops, batch, optimiser, lr schedule, EMA,
#: precision, process, model...) alters the run and is refused.
RESUME_MUTABLE = (
    "train.steps", "train.max_minutes", "train.log_every", "train.val_every", "train.ckpt_every",
    "train.keep_checkpoints", "train.num_workers", "train.out_dir", "train.device",
    "data.val_cases", "data.manifest", "data.folder", "inference",
)

_UNSET = object()


def _allowed(path: str, allowed: tuple[str, ...]) -> bool:
    return any(path == a or path.startswith(a + ".") for a in allowed)


def config_difference(old: Any, new: Any, allowed: tuple[str, ...] = RESUME_MUTABLE,
                      path: str = "") -> tuple[str, Any, Any] | None:
    """The first key path (in the new config's order) whose value differs and is not ``allowed``.

    Returns ``(path, old value, new value)`` (``"(unset)"`` for a missing key) or None. Numbers
    compare by value (``1`` equals ``1.0``), lists and tuples alike.
    """
    if path and _allowed(path, allowed):
        return None
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(new) + [k for k in old if k not in new]:
            diff = config_difference(old.get(key, _UNSET), new.get(key, _UNSET), allowed, _join(path, key))
            if diff is not None:
                return diff
        return None
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and len(old) == len(new):
        for a, b in zip(old, new):
            if config_difference(a, b, (), path + "[]") is not None:
                return (path, list(old), list(new))
        return None
    same = (type(old) is type(new) or (isinstance(old, (int, float)) and isinstance(new, (int, float))
                                       and not isinstance(old, bool) and not isinstance(new, bool)))
    if same and old == new:
        return None
    show = lambda v: "(unset)" if v is _UNSET else v  # noqa: E731
    return (path, show(old), show(new))
