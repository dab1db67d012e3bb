"""The methods the benchmarks compare, each a plain task config (no benchmark-only model code).

* ``full3d``: conditional DDPM (T = 1000, epsilon) with MONAI's ``DiffusionModelUNet``, the
  condition concatenated on channels, trained and sampled on the whole volume. MONAI's UNet
  always has a self-attention block at the bottleneck; voxdiff's adapter runs it with fused
  SDPA on CUDA and as an explicit N x N matrix on CPU. ``full3d-sdpa`` forces the fused
  kernel on any device (what a GPU run of ``full3d`` does).
* ``patch``: PatchDDM-3D style: the same DDPM with a voxdiff ``UNet3D`` and normalised global
  coordinate channels, trained on random crops of half the volume's edge, sampled on the whole
  volume (the network is fully convolutional).
* ``ppdm2`` / ``ppdm4``: PPDM (pixel puzzle r = 2 / 4 + bridge + puzzle-gradient loss) at the
  same base width; ``ppdm4w`` widens the backbone to ``r^3 x`` its input channels (128);
  ``-nograd`` variants drop the puzzle-gradient loss; ``ppdm2-inv`` / ``idm`` use the
  invertible backbone (listed only when :mod:`voxdiff.nets.invertible` imports);
  ``idm-stored`` is exactly the ``idm`` network with ``memory_saving: False`` (standard
  backprop storing activations: a standard UNet of equal parameters).

All share ``base`` (the first level's width) and a three-level encoder (widths ``b, 2b, 2b``).
Variants for the studies: :func:`with_depth` (``levels = 2 d``, ``d`` blocks per level),
:func:`with_checkpointing`, :func:`with_precision`; :func:`expand_methods` combines them.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Any

from voxdiff.errors import VoxdiffError

DDPM_PROCESS = {"kind": "ddpm", "num_train_timesteps": 1000, "prediction_type": "epsilon"}
# The process of configs/pet_ppdm.yaml.
BRIDGE_PROCESS = {"kind": "bridge", "num_train_timesteps": 1000, "schedule": "linear", "noise_scale": 0.5,
                  "prediction_type": "x0"}


@dataclass
class Method:
    """One benchmarked configuration.

    ``crop_fraction`` is the training crop edge relative to the volume edge (PatchDDM trains on
    patches); ``samplers`` maps a sampler name to ``(steps, eta)`` used by the sampling benchmark;
    ``puzzle_factor`` is 1 for non-puzzled methods. ``depth`` is set by :func:`with_depth` and
    ``family`` names the method a variant derives from (growth and ratios match on it).
    """

    name: str
    task: str
    model: dict[str, Any]
    description: str
    crop_fraction: float = 1.0
    samplers: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    precision: str = "fp32"
    sdpa_attention: bool = False
    depth: int | None = None
    family: str | None = None

    @property
    def puzzle_factor(self) -> int:
        """The method's puzzle factor (1 when not puzzled)."""
        return int(self.model.get("puzzle_factor", 1))

    @property
    def family_name(self) -> str:
        """The method this one is a variant of (its own name when it is no variant)."""
        return self.family or self.name

    @property
    def checkpointing(self) -> bool:
        """Whether the backbone recomputes activations in backward (``gradient_checkpointing``)."""
        return bool(self.model.get("backbone", {}).get("gradient_checkpointing", False))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, to pass a method to a worker subprocess."""
        return {"name": self.name, "task": self.task, "model": self.model, "description": self.description,
                "crop_fraction": self.crop_fraction, "samplers": {k: list(v) for k, v in self.samplers.items()},
                "precision": self.precision, "sdpa_attention": self.sdpa_attention, "depth": self.depth,
                "family": self.family}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Method":
        """Inverse of :meth:`to_dict`."""
        samplers = {k: (int(v[0]), None if v[1] is None else float(v[1])) for k, v in data.get("samplers", {}).items()}
        return cls(data["name"], data["task"], copy.deepcopy(data["model"]), data.get("description", ""),
                   float(data.get("crop_fraction", 1.0)), samplers, data.get("precision", "fp32"),
                   bool(data.get("sdpa_attention", False)),
                   None if data.get("depth") is None else int(data["depth"]), data.get("family"))

    def build(self):
        """The task, built as training builds it (plus the method's attention switch)."""
        from voxdiff.tasks import build_task

        task = build_task(self.task, self.model)
        if self.sdpa_attention:
            use_sdpa_attention(task)
        return task


def use_sdpa_attention(module) -> int:
    """Switch MONAI attention blocks to PyTorch's fused ``scaled_dot_product_attention``.

    voxdiff's MONAI adapter does so on CUDA only; the fused kernel gives the same result
    (to float rounding) without materialising the N x N attention matrix, which for the
    bottleneck of MONAI's DiffusionModelUNet (it always has a self-attention mid block) is
    ``heads x (V/64)^2`` floats, e.g. 8 GiB at 128^3. Returns the number of blocks switched.
    """
    n = 0
    for m in module.modules():
        if hasattr(m, "use_flash_attention") and not getattr(m, "save_attn", False):
            m.use_flash_attention = True
            n += 1
    return n


def invertible_available() -> bool:
    """Whether the invertible backbone imports (it is optional for the benchmarks)."""
    try:
        importlib.import_module("voxdiff.nets.invertible")
    except Exception:  # any import-time failure means "not available", never a crash
        return False
    return True


def _unet(base: int) -> dict[str, Any]:
    return {"kind": "unet", "base_channels": base, "channel_mults": [1, 2, 2], "num_res_blocks": 1,
            "attention_levels": []}


def _invertible(base: int) -> dict[str, Any]:
    return {"kind": "invertible", "base_channels": base, "levels": 3, "blocks_per_level": 1,
            "memory_saving": True}


def full3d_model(base: int = 32) -> dict[str, Any]:
    """Model section of the full-3D MONAI DDPM baseline."""
    return {"process": dict(DDPM_PROCESS),
            "backbone": {"kind": "monai", "channels": [base, 2 * base, 2 * base],
                         "attention_levels": [False, False, False], "num_res_blocks": 1, "norm_num_groups": 8,
                         "num_head_channels": base},
            "puzzle_factor": 1, "coords": False}


def patch_model(base: int = 32) -> dict[str, Any]:
    """Model section of the PatchDDM-3D style baseline (coordinate channels, UNet3D)."""
    return {"process": dict(DDPM_PROCESS), "backbone": _unet(base), "puzzle_factor": 1, "coords": True}


def ppdm_model(base: int = 32, factor: int = 2, gradient_loss: bool = True, backbone: str = "unet") -> dict[str, Any]:
    """Model section of PPDM at puzzle factor ``factor``."""
    bb = _invertible(base) if backbone == "invertible" else _unet(base)
    return {"process": dict(BRIDGE_PROCESS), "backbone": bb, "puzzle_factor": int(factor),
            "gradient_loss_weight": 0.1 if gradient_loss else 0.0, "channels": 1}


_DDPM_SAMPLERS = {"ddpm": (1000, 1.0), "ddim": (50, 0.0), "dpmsolver++": (10, None)}
_PPDM_SAMPLERS = {"bridge": (5, 0.0)}


def builtin_methods(base: int = 32) -> dict[str, Method]:
    """Every built-in method at base width ``base`` (invertible ones only if they import)."""
    wide = max(base, 2 * 4 ** 3)  # (source + x_t) * r^3 channels enter the r = 4 backbone
    out = {
        "full3d": Method("full3d", "translation_ddpm", full3d_model(base),
                         f"MONAI DiffusionModelUNet [{base},{2 * base},{2 * base}], DDPM, whole volume",
                         samplers=dict(_DDPM_SAMPLERS)),
        "full3d-sdpa": Method("full3d-sdpa", "translation_ddpm", full3d_model(base),
                              "full3d with fused SDPA attention in MONAI's bottleneck attention (as on CUDA)",
                              samplers=dict(_DDPM_SAMPLERS), sdpa_attention=True),
        "patch": Method("patch", "translation_ddpm", patch_model(base),
                        f"UNet3D base {base} + coordinates, DDPM, crops of half the edge", crop_fraction=0.5,
                        samplers=dict(_DDPM_SAMPLERS)),
    }
    for r in (2, 4):
        out[f"ppdm{r}"] = Method(f"ppdm{r}", "translation", ppdm_model(base, r),
                                 f"PPDM r={r}, UNet3D base {base}, bridge + puzzle-gradient loss",
                                 samplers=dict(_PPDM_SAMPLERS))
        out[f"ppdm{r}-nograd"] = Method(f"ppdm{r}-nograd", "translation", ppdm_model(base, r, gradient_loss=False),
                                        f"PPDM r={r}, UNet3D base {base}, no puzzle-gradient loss",
                                        samplers=dict(_PPDM_SAMPLERS))
    out["ppdm4w"] = Method("ppdm4w", "translation", ppdm_model(wide, 4),
                           f"PPDM r=4, UNet3D widened to base {wide} (= r^3 x input channels)",
                           samplers=dict(_PPDM_SAMPLERS))
    if invertible_available():
        out["ppdm2-inv"] = Method("ppdm2-inv", "translation", ppdm_model(base, 2, backbone="invertible"),
                                  f"PPDM r=2, invertible UNet base {base} (memory-saving backward)",
                                  samplers=dict(_PPDM_SAMPLERS))
        idm = {"process": dict(DDPM_PROCESS), "backbone": _invertible(base), "puzzle_factor": 1, "coords": False}
        out["idm"] = Method("idm", "translation_ddpm", idm,
                            f"conditional DDPM, invertible UNet base {base}, whole volume (IDM-style)",
                            samplers=dict(_DDPM_SAMPLERS))
        stored = copy.deepcopy(idm)
        stored["backbone"]["memory_saving"] = False
        out["idm-stored"] = Method("idm-stored", "translation_ddpm", stored,
                                   f"idm's network with stored activations (standard backprop), base {base}",
                                   samplers=dict(_DDPM_SAMPLERS))
    return out


DEFAULT_METHODS = ("full3d", "patch", "ppdm2", "ppdm4")


def resolve_methods(names: list[str] | tuple[str, ...], base: int = 32) -> list[Method]:
    """Methods by name; an unknown name is a user error listing the known ones."""
    known = builtin_methods(base)
    out = []
    for name in names:
        if name not in known:
            hint = (" (the invertible backbone does not import here)"
                    if name in ("ppdm2-inv", "idm", "idm-stored") else "")
            raise VoxdiffError(f"unknown benchmark method '{name}'{hint}; known: {', '.join(known)}")
        out.append(known[name])
    return out


PRECISIONS = ("fp32", "bf16", "fp16")


def _variant(method: Method, name: str, model: dict[str, Any], **changes: Any) -> Method:
    data = method.to_dict()
    data.update(name=name, model=model, family=method.family_name, **changes)
    return Method.from_dict(data)


def _deepen(values: list, n: int, fill: Any) -> list:
    """``values`` cut or padded (with ``fill``) to length ``n``."""
    return list(values[:n]) + [fill] * max(0, n - len(values))


def with_depth(method: Method, depth: int) -> Method:
    """``method`` with its backbone rebuilt at depth multiplier ``depth`` (named ``NAME@dD``).

    Depth ``d`` means ``2 d`` resolution levels and ``d`` blocks per level: a 2-level, 1-block
    net at ``d = 1``, both doubled at ``d = 2``. Per backbone kind: ``invertible`` sets
    ``levels`` / ``blocks_per_level`` (widths then follow the invertible-downsampling rule);
    ``unet`` cuts or extends ``channel_mults`` to ``2 d`` entries by repeating the last one (so
    widths stay bounded) and sets ``num_res_blocks = d``; ``monai`` does the same to
    ``channels`` (``attention_levels`` extended with False). Attention levels past the new
    depth are dropped. The spatial multiple the net needs is then ``2 ** (2 d - 1)`` (times the
    puzzle factor).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise VoxdiffError(f"depth multiplier must be an integer >= 1, got {depth!r}")
    if method.depth is not None:
        raise VoxdiffError(f"{method.name} already has depth {method.depth}")
    model = copy.deepcopy(method.model)
    bb = model.get("backbone", {})
    kind, levels = bb.get("kind", "unet"), 2 * depth
    if kind == "invertible":
        bb["levels"], bb["blocks_per_level"] = levels, depth
        if "attention_levels" in bb:
            bb["attention_levels"] = [a for a in bb["attention_levels"] if int(a) < levels]
    elif kind == "unet":
        mults = list(bb.get("channel_mults", (1, 2, 4)))  # UNet3D's default
        bb["channel_mults"] = _deepen(mults, levels, mults[-1])
        bb["num_res_blocks"] = depth
        bb["attention_levels"] = [a for a in bb.get("attention_levels", []) if int(a) < levels]
    elif kind == "monai":
        chans = list(bb.get("channels", (32, 64, 64)))  # MonaiDiffusionUNet's default
        attn = list(bb.get("attention_levels", ())) or [False] * len(chans)
        bb["channels"] = _deepen(chans, levels, chans[-1])
        bb["attention_levels"] = _deepen(attn, levels, False)
        bb["num_res_blocks"] = depth
    else:
        raise VoxdiffError(f"{method.name}: no depth rule for backbone kind {kind!r}")
    model["backbone"] = bb
    return _variant(method, f"{method.name}@d{depth}", model, depth=depth)


def with_checkpointing(method: Method) -> Method | None:
    """``method`` with ``gradient_checkpointing: true`` (named ``NAME+ckpt``); None where the
    backbone has no such option (the invertible one recomputes by inversion instead)."""
    model = copy.deepcopy(method.model)
    bb = model.get("backbone", {})
    if bb.get("kind", "unet") not in ("unet", "monai"):
        return None
    bb["gradient_checkpointing"] = True
    model["backbone"] = bb
    return _variant(method, f"{method.name}+ckpt", model)


def with_precision(method: Method, precision: str) -> Method:
    """``method`` trained under ``precision`` (fp32, bf16 or fp16 autocast, as the trainer does)."""
    if precision not in PRECISIONS:
        raise VoxdiffError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return _variant(method, method.name, copy.deepcopy(method.model), precision=precision)


def expand_methods(methods: list[Method], *, depths: list[int] | None = None, precisions: list[str] | None = None,
                   checkpointing: bool = False) -> tuple[list[Method], list[str]]:
    """Every method x depth x precision (x with / without checkpointing), grouped per method.

    ``None`` / ``False`` leaves that axis as the methods have it. Returns the variants and
    notes about skipped ones (checkpointing asked for a backbone without the option).
    """
    out, notes = [], []  # with_precision refuses an unknown precision
    for m in methods:
        for d in depths or [None]:
            md = m if d is None else with_depth(m, d)
            for p in precisions or [None]:
                mp = md if p is None else with_precision(md, p)
                out.append(mp)
                if checkpointing and not mp.checkpointing:
                    ck = with_checkpointing(mp)
                    if ck is not None:
                        out.append(ck)
        if checkpointing and with_checkpointing(m) is None:
            kind = m.model.get("backbone", {}).get("kind", "unet")
            notes.append(f"{m.name}: no +ckpt variant (backbone '{kind}' has no gradient_checkpointing option)")
    return out, notes


def method_from_config(path: str, overrides: list[str] | None = None) -> Method:
    """A user's training config (YAML) as a method named after the file."""
    from pathlib import Path

    from voxdiff.train.config import load_config

    cfg = load_config(path, overrides)
    steps = int(cfg["inference"]["steps"])
    eta = cfg["inference"].get("eta")
    return Method(Path(path).stem, cfg["task"], cfg["model"], f"{path} (task {cfg['task']})",
                  samplers={"config": (steps, None if eta is None else float(eta))},
                  precision=cfg["train"]["precision"])
