"""Segmentation as diffusion: mask encoding, ensemble uncertainty, and its evaluation.

A label map is diffused as a one-hot tensor scaled to ``[-1, 1]`` (:func:`encode_mask`); a
sampled state is read back as per-class probabilities (:func:`decode_mask`). Several samples
from the same input form an ensemble whose disagreement is the uncertainty map
(:func:`ensemble_statistics`), scored against actual errors with :func:`auroc`.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.utils import one_hot
from scipy.stats import rankdata

from voxdiff.diffusion.base import NoiseProcess


def labels_to_onehot(labels: torch.Tensor, num_classes: int, spatial_dims: int | None = None) -> torch.Tensor:
    """Integer label map (B,1,...) or (B,...) -> float one-hot (B,K,...).

    Without ``spatial_dims`` a size-1 dimension 1 (with at least 3 dims in all) is taken as the
    channel; pass ``spatial_dims`` to remove the ambiguity (channel present iff
    ``ndim == spatial_dims + 2``). Labels must be integers in ``0 .. num_classes-1``.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if spatial_dims is not None:
        has_channel = labels.ndim == spatial_dims + 2
        if labels.ndim not in (spatial_dims + 1, spatial_dims + 2):
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not fit spatial_dims={spatial_dims}")
    else:
        has_channel = labels.ndim >= 3 and labels.shape[1] == 1
    if has_channel and labels.shape[1] != 1:
        raise ValueError(f"labels must have one channel, got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got range "
                         f"{int(labels.min())}..{int(labels.max())}")
    if not has_channel:
        labels = labels.unsqueeze(1)
    return one_hot(labels.long(), num_classes, dtype=torch.float32, dim=1)


def encode_mask(onehot: torch.Tensor) -> torch.Tensor:
    """One-hot / probabilities in ``[0, 1]`` -> diffusion data in ``[-1, 1]`` (``2 p - 1``)."""
    return 2.0 * onehot.float() - 1.0


def decode_mask(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Diffusion state (B,K,...) -> class probabilities (B,K,...), summing to 1 over classes.

    Softmax-free: ``p = (clamp(x, -1, 1) + 1) / 2`` per class, then ``(p + eps) / sum_k (p + eps)``;
    the ``eps`` makes an all-negative voxel uniform instead of 0/0. An exactly encoded one-hot
    decodes to itself up to ``~K * eps``.
    """
    p = (x.clamp(-1.0, 1.0) + 1.0) / 2.0 + eps
    return p / p.sum(dim=1, keepdim=True)


def mask_to_labels(x: torch.Tensor) -> torch.Tensor:
    """Diffusion state or probabilities (B,K,...) -> integer labels (B,...) by class argmax."""
    return x.argmax(dim=1)


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` with ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(dim=dim)


def ensemble_statistics(samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """Uncertainty of an ensemble of per-class probability maps ``samples`` (N,B,K,...).

    Returns a dict of tensors:

    * ``mean_probs`` (B,K,...): the ensemble mean;
    * ``labels`` (B,...): argmax of ``mean_probs`` (long);
    * ``entropy`` (B,...): entropy of ``mean_probs`` over classes, in nats (predictive entropy);
    * ``expected_entropy`` (B,...): mean over samples of each sample's entropy (aleatoric part);
    * ``variance`` (B,...): across-sample variance (population, ``N`` in the denominator),
      averaged over classes;
    * ``mutual_information`` (B,...): ``entropy - expected_entropy`` (BALD, the disagreement
      between samples), clamped at 0 against rounding.
    """
    if samples.ndim < 3:
        raise ValueError(f"samples must be (N,B,K,...), got shape {tuple(samples.shape)}")
    samples = samples.float()
    mean_probs = samples.mean(dim=0)
    entropy = _entropy(mean_probs, dim=1)
    expected_entropy = _entropy(samples, dim=2).mean(dim=0)
    return {
        "mean_probs": mean_probs,
        "labels": mean_probs.argmax(dim=1),
        "entropy": entropy,
        "expected_entropy": expected_entropy,
        "variance": samples.var(dim=0, correction=0).mean(dim=1),
        "mutual_information": (entropy - expected_entropy).clamp(min=0.0),
    }


@torch.no_grad()
def forward_diffuse_mask_stats(process: NoiseProcess, x0: torch.Tensor, t: int | torch.Tensor,
                               source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-voxel variance of ``q(x_t | x0)`` for a process that is Gaussian in its noise.

    For :class:`~voxdiff.diffusion.ddpm.DDPMProcess` this is the PD-DDPM start distribution
    ``q(x_t' | x0 = pre-segmentation)``: mean ``sqrt(abar_t') x0``, variance ``1 - abar_t'``.
    Computed through ``process.add_noise`` (which is affine in the noise), so it holds for any
    process with that form: mean = ``add_noise(x0, 0, t)``, std = ``add_noise(x0, 1, t) - mean``.
    """
    t = torch.as_tensor(t, dtype=torch.long, device=x0.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(x0.shape[0])
    mean = process.add_noise(x0, torch.zeros_like(x0), t, source=source)
    std = process.add_noise(x0, torch.ones_like(x0), t, source=source) - mean
    return mean, std ** 2


def auroc(scores, is_error) -> float:
    """Area under the ROC curve of ``scores`` for detecting ``is_error`` (rank-based Mann-Whitney U).

    Ties get average ranks (so tied scores count 1/2), which makes constant scores give 0.5.
    Accepts numpy arrays or tensors of any matching size (flattened). Returns ``nan`` when
    ``is_error`` is all true or all false (AUROC undefined).
    """
    s = _flat_numpy(scores).astype(np.float64)
    y = _flat_numpy(is_error).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size} values) and is_error ({y.size} values) differ in size")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _flat_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a).reshape(-1)
