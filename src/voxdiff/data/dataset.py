"""Loading cases and serving normalised, padded, deterministically cropped volumes to torch.

:class:`VolumeDataset` gives dicts ``{role: float32 tensor (1, X, Y, Z), "case": id,
"location": start of the item in the case's voxel grid (negative where padded),
"shape": the case's shape}``. Random crops come from a local numpy Generator seeded with
``(seed, epoch, index)``, so a run resumed at an epoch sees exactly the crops it would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import DivisiblePad, SpatialCrop, SpatialPad

from voxdiff.data.manifest import Case
from voxdiff.data.normalization import case_normalizers, normalizers_to_dict, resolve_normalization
from voxdiff.errors import VoxdiffError
from voxdiff.intensity import Normalizer
from voxdiff.io import Volume, check_same_geometry, load_volume

__all__ = ["load_case", "check_label_values", "VolumeDataset"]

_LABEL_ATOL = 1e-3


def check_label_values(volume: Volume, what: str) -> np.ndarray:
    """Return the label array rounded to integers, or a clear error if it is not integer-valued.

    Non-finite values and values beyond +-65535 are refused too (see
    :func:`voxdiff.io.limits.check_label_range`): such a map is an image, and its "classes" would
    size one-hot encodings and lookup tables.
    """
    from voxdiff.io.limits import check_label_range

    arr = volume.array
    check_label_range(arr, what)
    rounded = np.rint(arr)
    bad = np.abs(arr - rounded) > _LABEL_ATOL
    if bad.any():
        example = float(arr[bad].flat[0])
        raise VoxdiffError(
            f"{what}: a label map must hold integer values, found {example:g} in {int(bad.sum())} voxel(s) "
            "(is it an image or a probability map?)"
        )
    return rounded.astype(np.float32)


def load_case(
    case: Case,
    roles: Sequence[str],
    label_roles: Sequence[str] = ("label",),
    atol: float = 1e-3,
    *,
    require_nonempty_labels: bool = False,
) -> dict[str, Volume]:
    """Load ``roles`` of ``case`` and check them: same shape and affine (within ``atol`` mm),
    integer-valued label roles, and, with ``require_nonempty_labels``, no all-zero label map.
    """
    if not roles:
        raise VoxdiffError(f"case '{case.id}': no role to load")
    volumes: dict[str, Volume] = {}
    for role in roles:
        vol = load_volume(case.path(role), role=f"case '{case.id}', {role}")
        what = f"case '{case.id}', {role} {vol.path}"
        if role in label_roles:
            vol.array = check_label_values(vol, what)
            if require_nonempty_labels and not (vol.array != 0).any():
                raise VoxdiffError(f"{what}: the label map is empty (all voxels are 0)")
        if volumes:
            check_same_geometry(next(iter(volumes.values())), vol, atol=atol, what=f"case '{case.id}'")
        volumes[role] = vol
    return volumes


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    vals = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(vals) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in vals):
        raise VoxdiffError(f"{name} must be a positive integer or three of them, got {value!r}")
    return tuple(int(v) for v in vals)  # type: ignore[return-value]


@dataclass
class _Prepared:
    arrays: dict[str, np.ndarray]      # normalised images (float32) / labels (smallest int dtype)
    pad_values: dict[str, float]
    normalizers: dict[str, Normalizer | None]
    shape: tuple[int, int, int]
    foreground: np.ndarray | None      # flat indices of foreground voxels


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if isinstance(t, MetaTensor) else t


class VolumeDataset(torch.utils.data.Dataset):
    """Cases as normalised tensors, whole (padded to ``pad_multiple``) or as random crops.

    Args:
        cases: the cases (e.g. one split of :func:`~voxdiff.data.split_cases`).
        roles: roles to load, e.g. ``("source", "target")`` or ``("image", "label")``.
        normalization: ``{role: spec}`` (see :mod:`voxdiff.data.normalization`); images default
            to per-case percentile 0.5-99.5 scaling to [-1, 1], labels to ``none``.
        crop_size: crop edge (int or 3 ints); ``None`` serves whole volumes (validation, inference).
            Volumes smaller than the crop are padded first.
        label_roles: roles holding integer labels (checked, never normalised, padded with 0).
        pad_multiple: with ``crop_size=None``, pad each axis up to a multiple of this (UNet depth).
        samples_per_volume: items per case per epoch (several crops of one cached volume).
        seed: crop seed; the crop of item ``index`` in epoch ``e`` depends only on (seed, e, index).
        cache: keep normalised volumes in memory after their first load (per DataLoader worker).
        foreground_role, foreground_fraction: with this probability, centre the crop on a random
            foreground voxel of that role (label > 0; for an image, above its background value).
        dataset_normalizers: parameters from :func:`~voxdiff.data.fit_dataset_normalizers` for
            ``"per": "dataset"`` roles.
        label_dtype: ``torch.float32`` (default) or ``torch.long`` for label tensors.
        atol: affine tolerance (mm) between the roles of a case.
        downsample: integer factor to block-average volumes by after loading (cheap CPU trials,
            e.g. synthesis at 4 mm from 2 mm data); 1 keeps the native grid.
        conditions: names of scalar conditions read from each case's ``meta`` (numbers, e.g. a
            dose); items then carry them as ``item["conditions"]`` (float64, one per name).

    Padding uses the normalised background of each image role (the minimum of its normalised
    volume, e.g. -1 for a clipped range scaler) and 0 for labels.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        roles: Sequence[str],
        normalization: Mapping[str, Mapping[str, Any]] | None = None,
        crop_size: int | Sequence[int] | None = None,
        label_roles: Sequence[str] = ("label",),
        pad_multiple: int | Sequence[int] = 1,
        samples_per_volume: int = 1,
        seed: int = 0,
        cache: bool = True,
        foreground_role: str | None = None,
        foreground_fraction: float = 0.0,
        *,
        dataset_normalizers: Mapping[str, Mapping[str, Any]] | None = None,
        label_dtype: torch.dtype = torch.float32,
        atol: float = 1e-3,
        downsample: int = 1,
        conditions: Sequence[str] = (),
    ) -> None:
        self.cases = list(cases)
        if not self.cases:
            raise VoxdiffError("VolumeDataset needs at least one case")
        self.roles = tuple(roles)
        if not self.roles:
            raise VoxdiffError("VolumeDataset needs at least one role")
        self.label_roles = tuple(r for r in label_roles if r in self.roles)
        for case in self.cases:
            for role in self.roles:
                case.path(role)
        self.normalization = resolve_normalization(normalization, self.roles, self.label_roles)
        self.crop_size = None if crop_size is None else _triple(crop_size, "crop_size")
        self.pad_multiple = _triple(pad_multiple, "pad_multiple")
        if not (isinstance(samples_per_volume, int) and samples_per_volume >= 1):
            raise VoxdiffError(f"samples_per_volume must be a positive integer, got {samples_per_volume!r}")
        self.samples_per_volume = samples_per_volume
        if foreground_role is not None and foreground_role not in self.roles:
            raise VoxdiffError(f"foreground_role '{foreground_role}' is not among the roles {', '.join(self.roles)}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise VoxdiffError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if foreground_fraction > 0 and foreground_role is None:
            raise VoxdiffError("foreground_fraction > 0 needs a foreground_role")
        if label_dtype not in (torch.float32, torch.long):
            raise VoxdiffError(f"label_dtype must be torch.float32 or torch.long, got {label_dtype}")
        self.foreground_role = foreground_role
        self.foreground_fraction = float(foreground_fraction)
        self.dataset_normalizers = dict(dataset_normalizers or {})
        self.label_dtype = label_dtype
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self.atol = atol
        if not (isinstance(downsample, int) and downsample >= 1):
            raise VoxdiffError(f"downsample must be a positive integer, got {downsample!r}")
        self.downsample = downsample
        self.conditions = tuple(conditions)
        self._values = [self._condition_values(c) for c in self.cases]
        self._cache: dict[int, _Prepared] = {}

    def __len__(self) -> int:
        return len(self.cases) * self.samples_per_volume

    def _condition_values(self, case: Case) -> torch.Tensor | None:
        if not self.conditions:
            return None
        out = []
        for name in self.conditions:
            raw = case.meta.get(name)
            if raw is None or str(raw).strip() == "":
                raise VoxdiffError(f"case '{case.id}' has no value for the condition '{name}'")
            try:
                out.append(float(raw))
            except ValueError:
                raise VoxdiffError(f"case '{case.id}': condition '{name}' is not a number: '{raw}'") from None
        return torch.tensor(out, dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops the next items use (call before each epoch)."""
        self.epoch = int(epoch)

    def case_index(self, case_id: str) -> int:
        """Position of a case in :attr:`cases`."""
        for i, c in enumerate(self.cases):
            if c.id == case_id:
                return i
        raise VoxdiffError(f"case '{case_id}' is not in this dataset")

    def normalizers(self, case: int | str) -> dict[str, Normalizer | None]:
        """The fitted normaliser of each role of a case (index or id), to invert outputs to units."""
        i = self.case_index(case) if isinstance(case, str) else int(case)
        return self._prepared(i).normalizers

    def normalizer_dicts(self, case: int | str) -> dict[str, dict[str, Any] | None]:
        """:meth:`normalizers` as plain data (JSON, checkpoints)."""
        return normalizers_to_dict(self.normalizers(case))

    def _prepare(self, i: int) -> _Prepared:
        case = self.cases[i]
        volumes = load_case(case, self.roles, self.label_roles, self.atol)
        if self.downsample > 1:
            from voxdiff.ops.resample import downsample_volume

            volumes = {r: downsample_volume(v, self.downsample, label=r in self.label_roles) for r, v in volumes.items()}
        norms = case_normalizers(volumes, self.normalization, label_roles=self.label_roles,
                                 dataset_normalizers=self.dataset_normalizers)
        arrays: dict[str, np.ndarray] = {}
        pad_values: dict[str, float] = {}
        for role, vol in volumes.items():
            if role in self.label_roles:
                lo, hi = float(vol.array.min()), float(vol.array.max())
                dtype = next(t for t in (np.uint8, np.int16, np.int32, np.int64)
                             if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
                arrays[role] = vol.array.astype(dtype)
                pad_values[role] = 0.0
            else:
                norm = norms[role]
                out = vol.array if norm is None else norm.forward(vol.array)
                arrays[role] = np.ascontiguousarray(out, dtype=np.float32)
                pad_values[role] = float(arrays[role].min())
        foreground = None
        if self.foreground_role is not None and self.foreground_fraction > 0:
            arr = arrays[self.foreground_role]
            mask = arr > 0 if self.foreground_role in self.label_roles else arr > pad_values[self.foreground_role]
            foreground = np.flatnonzero(mask).astype(np.int64)
        shape = tuple(int(s) for s in volumes[self.roles[0]].shape)
        return _Prepared(arrays, pad_values, norms, shape, foreground)  # type: ignore[arg-type]

    def _prepared(self, i: int) -> _Prepared:
        if i in self._cache:
            return self._cache[i]
        prep = self._prepare(i)
        if self.cache:
            self._cache[i] = prep
        return prep

    def _finish(self, role: str, t: torch.Tensor) -> torch.Tensor:
        # Converted after cropping (only the crop is copied), and always copied: the cached
        # array must never be shared with a caller that might modify the tensor in place.
        t = _plain(t)
        return t.to(self.label_dtype if role in self.label_roles else torch.float32, copy=True).contiguous()

    def _crop_start(self, index: int, padded_shape: Sequence[int], foreground: np.ndarray | None = None,
                   shape: Sequence[int] | None = None, pad_before: Sequence[int] = (0, 0, 0)) -> tuple[int, int, int]:
        """Crop corner (in the padded grid) for item ``index`` of the current epoch."""
        assert self.crop_size is not None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        use_fg = rng.random() < self.foreground_fraction
        highs = [p - c for p, c in zip(padded_shape, self.crop_size)]
        if use_fg and foreground is not None and foreground.size and shape is not None:
            centre = np.unravel_index(int(foreground[rng.integers(foreground.size)]), tuple(shape))
            return tuple(int(np.clip(c + b - s // 2, 0, h)) for c, b, s, h in
                         zip(centre, pad_before, self.crop_size, highs))  # type: ignore[return-value]
        return tuple(int(rng.integers(0, h + 1)) for h in highs)  # type: ignore[return-value]

    def _padder(self, shape: Sequence[int], value: float = 0.0) -> DivisiblePad | SpatialPad:
        if self.crop_size is None:
            return DivisiblePad(self.pad_multiple, method="symmetric", value=value)
        return SpatialPad([max(s, c) for s, c in zip(shape, self.crop_size)], method="symmetric", value=value)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        prep = self._prepared(index // self.samples_per_volume)
        case = self.cases[index // self.samples_per_volume]
        widths = self._padder(prep.shape).compute_pad_width(prep.shape)[1:]
        before = [w[0] for w in widths]
        padded_shape = [s + w[0] + w[1] for s, w in zip(prep.shape, widths)]
        start = [0, 0, 0]
        cropper = None
        if self.crop_size is not None:
            start = list(self._crop_start(index, padded_shape, prep.foreground, prep.shape, before))
            cropper = SpatialCrop(roi_start=start, roi_end=[s + c for s, c in zip(start, self.crop_size)])
        item: dict[str, Any] = {}
        for role in self.roles:
            t = torch.from_numpy(prep.arrays[role])[None]
            if any(w != (0, 0) for w in widths):
                t = self._padder(prep.shape, prep.pad_values[role])(t)
            if cropper is not None:
                t = cropper(t)
            item[role] = self._finish(role, t)
        item["case"] = case.id
        values = self._values[index // self.samples_per_volume]
        if values is not None:
            item["conditions"] = values.clone()
        item["location"] = torch.tensor([s - b for s, b in zip(start, before)], dtype=torch.long)
        item["shape"] = torch.tensor(prep.shape, dtype=torch.long)
        return item
