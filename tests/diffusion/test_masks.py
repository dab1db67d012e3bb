"""Mask-diffusion utilities: one-hot encoding, ensemble uncertainty, forward stats, AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from voxdiff.diffusion.samplers import build_sampler

from voxdiff.diffusion.ddpm import DDPMProcess
from voxdiff.diffusion.masks import (auroc, decode_mask, encode_mask, ensemble_statistics,
                                     forward_diffuse_mask_stats, labels_to_onehot, mask_to_labels)


def _labels(shape=(2, 6, 6, 6), k=3, seed=0) -> torch.Tensor:
    return torch.randint(0, k, shape, generator=torch.Generator().manual_seed(seed))


def test_onehot_roundtrip_with_and_without_channel():
    lab = _labels()
    oh = labels_to_onehot(lab, 3)
    assert oh.shape == (2, 3, 6, 6, 6) and oh.dtype == torch.float32
    torch.testing.assert_close(oh.sum(1), torch.ones(2, 6, 6, 6))
    assert torch.equal(oh.argmax(1), lab)
    assert torch.equal(labels_to_onehot(lab.unsqueeze(1), 3), oh)
    x = encode_mask(oh)
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    probs = decode_mask(x)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 6, 6, 6))
    torch.testing.assert_close(probs, oh, atol=1e-5, rtol=0)
    assert torch.equal(mask_to_labels(x), lab)
    # spatial_dims disambiguates a (B, 1, H, W) 2-D map from a channel-first 3-D map.
    lab2d = _labels((2, 1, 5, 5))
    assert labels_to_onehot(lab2d, 3, spatial_dims=3).shape == (2, 3, 1, 5, 5)
    assert labels_to_onehot(lab2d, 3, spatial_dims=2).shape == (2, 3, 5, 5)


def test_onehot_rejects_bad_labels():
    with pytest.raises(ValueError):
        labels_to_onehot(torch.full((1, 4, 4, 4), 3), 3)
    with pytest.raises(ValueError):
        labels_to_onehot(torch.full((1, 4, 4, 4), -1), 3)
    with pytest.raises(ValueError):
        labels_to_onehot(torch.zeros(1, 4, 4, 4), 3)  # float labels


def test_decode_mask_clamps_and_normalises():
    x = torch.tensor([[3.0, -5.0], [-1.0, -1.0], [0.0, 0.5]]).T.reshape(2, 3, 1)  # (B=2, K=3, 1)
    p = decode_mask(x)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 1))
    assert torch.all(p >= 0)
    # First voxel: class 0 saturates at 1, others (0, 0.5) -> 1 : 0 : 0.5 after normalisation.
    torch.testing.assert_close(p[0, :, 0], torch.tensor([1 / 1.5, 0.0, 0.5 / 1.5]), atol=1e-5, rtol=0)
    # All classes at -1: uniform, not 0/0.
    torch.testing.assert_close(decode_mask(torch.full((1, 4, 2), -1.0)), torch.full((1, 4, 2), 0.25))


def test_ensemble_of_identical_samples_has_no_uncertainty():
    lab = _labels(seed=1)
    oh = labels_to_onehot(lab, 3)
    stats = ensemble_statistics(oh.unsqueeze(0).expand(4, *oh.shape))
    assert torch.equal(stats["labels"], lab)
    torch.testing.assert_close(stats["mean_probs"], oh)
    for key in ("entropy", "variance", "mutual_information", "expected_entropy"):
        assert stats[key].shape == lab.shape
        assert float(stats[key].abs().max()) < 1e-6, key


def test_disagreeing_samples_give_positive_uncertainty():
    a = labels_to_onehot(torch.zeros(1, 2, 2, 2, dtype=torch.long), 2)
    b = a.clone()
    b[:, :, 0, 0, 0] = torch.tensor([0.0, 1.0])  # one voxel where the two samples disagree
    stats = ensemble_statistics(torch.stack([a, b]))
    ent, var, mi = stats["entropy"], stats["variance"], stats["mutual_information"]
    assert ent[0, 0, 0, 0] == pytest.approx(math.log(2), abs=1e-6)  # mean (0.5, 0.5)
    assert mi[0, 0, 0, 0] == pytest.approx(math.log(2), abs=1e-6)  # confident samples: all epistemic
    assert var[0, 0, 0, 0] == pytest.approx(0.25, abs=1e-6)  # population variance of {0, 1}
    others = torch.ones_like(ent, dtype=torch.bool)
    others[0, 0, 0, 0] = False
    assert float(ent[others].abs().max()) < 1e-6 and float(var[others].abs().max()) < 1e-6
    # A single soft sample: entropy without disagreement (mutual information 0).
    soft = torch.full((1, 1, 2, 1), 0.5)
    s = ensemble_statistics(soft)
    assert float(s["entropy"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(s["mutual_information"]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("t", [0, 300, 999])
def test_forward_diffuse_mask_stats_documented_mean_and_variance(t):
    p = DDPMProcess()
    x0 = encode_mask(labels_to_onehot(_labels((1, 16, 16, 16), seed=2), 3))
    mean, var = forward_diffuse_mask_stats(p, x0, t)
    abar = float(p.alphas_cumprod[t])
    torch.testing.assert_close(mean, math.sqrt(abar) * x0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(var, torch.full_like(x0, 1 - abar), atol=1e-6, rtol=1e-5)
    # Empirical check against the PD-DDPM start state produced by the sampler itself.
    sampler = build_sampler(None, p)
    sampler.set_timesteps(1, start_step=t)
    xs = torch.stack([sampler.initial_state(x0.shape, start=x0, generator=torch.Generator().manual_seed(s))
                      for s in range(4)])
    resid = (xs - mean) / var.sqrt().clamp(min=1e-12)
    assert abs(float(resid.mean())) < 0.05 and float(resid.var()) == pytest.approx(1.0, abs=0.05)


def test_auroc_perfect_random_constant_and_ties():
    y = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    assert auroc(y.astype(float) * 2 + 1, y) == 1.0
    assert auroc(-(y.astype(float)), y) == 0.0
    assert auroc(np.ones(6), y) == 0.5
    # One tie between a positive and a negative counts 1/2: (8 + 0.5) / 9.
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.7]), y) == pytest.approx(8.5 / 9)
    rng = np.random.default_rng(0)
    big = rng.random(20000) < 0.3
    assert auroc(rng.random(20000), big) == pytest.approx(0.5, abs=0.02)
    assert math.isnan(auroc(np.arange(4.0), np.zeros(4, bool)))
    # Tensors of any shape are flattened.
    assert auroc(torch.tensor([[0.0, 1.0], [0.2, 0.9]]), torch.tensor([[0, 1], [0, 1]])) == 1.0
    with pytest.raises(ValueError):
        auroc(np.zeros(3), np.zeros(4))


def test_auroc_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.random(500) < rng.uniform(0.1, 0.9)
        scores = np.round(rng.random(500) + 0.5 * y, 1)  # coarse rounding creates many ties
        assert auroc(scores, y) == pytest.approx(sklearn_metrics.roc_auc_score(y, scores), abs=1e-12)
