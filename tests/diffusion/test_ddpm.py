"""DDPMProcess and its DDIM/DDPM samplers: forward process, targets, respaced sampling, agreement with MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from voxdiff.diffusion import DDPMProcess, sample_loop
from voxdiff.diffusion.base import NoiseProcess
from voxdiff.diffusion.samplers import build_sampler
from voxdiff.errors import VoxdiffError

SHAPE = (2, 1, 8, 8, 8)


def _x0(seed: int = 0, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 1.8 - 0.9  # inside [-1, 1] so clipping never binds


def _perfect(process: DDPMProcess, x0: torch.Tensor, calls: list | None = None):
    """model_fn returning the exact output a perfect network would give, from the test's own formulas."""
    abar_all = process.alphas_cumprod

    def fn(x_t, t):
        if calls is not None:
            calls.append(int(t[0]))
        a = abar_all[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        if process.prediction_type == "x0":
            return x0.clone()
        if process.prediction_type == "epsilon":
            return eps
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return fn


def test_is_noise_process_and_config_roundtrip():
    p = DDPMProcess(num_train_timesteps=200, beta_schedule="cosine", prediction_type="v", sampler="ddim")
    assert isinstance(p, NoiseProcess)
    q = DDPMProcess(**p.config())
    assert q.config() == p.config()
    assert torch.equal(q.alphas_cumprod, p.alphas_cumprod)
    # The checkpoint's sampler and eta are the defaults of build_sampler(None, process).
    assert build_sampler(None, p).eta == 0.0 and build_sampler(None, DDPMProcess()).eta == 1.0
    assert build_sampler(None, DDPMProcess(eta=0.3)).eta == 0.3


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_schedules_are_valid(schedule):
    for T in (50, 1000):
        p = DDPMProcess(T, beta_schedule=schedule)
        assert p.betas.shape == (T,)
        assert torch.all(p.betas > 0) and torch.all(p.betas < 1)
        assert torch.all(torch.diff(p.alphas_cumprod) < 0)
        # Scaling by 1000/T keeps the chain ending near pure noise for short T too.
        assert p.alphas_cumprod[-1] < 0.01


def test_bad_options_raise():
    with pytest.raises(VoxdiffError):
        DDPMProcess(beta_schedule="quadratic")
    with pytest.raises(VoxdiffError):
        DDPMProcess(prediction_type="residual")
    with pytest.raises(VoxdiffError):
        DDPMProcess(sampler="euler")
    p = build_sampler(None, DDPMProcess(100))
    with pytest.raises(VoxdiffError):
        p.set_timesteps(101)
    with pytest.raises(VoxdiffError):
        p.set_timesteps(5, start_step=100)
    with pytest.raises(VoxdiffError):
        p.set_timesteps(5, start_step=3)


def test_sample_timesteps_uniform_range_and_seeded():
    p = DDPMProcess(10)
    t = p.sample_timesteps(5000, generator=torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 9
    counts = torch.bincount(t, minlength=10).float()
    assert torch.all((counts - 500).abs() < 100)
    t2 = p.sample_timesteps(5000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, t2)


@pytest.mark.parametrize("tval", [0, 250, 999])
def test_add_noise_moments(tval):
    p = DDPMProcess()
    x0 = _x0(3, (1, 1, 32, 32, 32))
    g = torch.Generator().manual_seed(tval)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([tval])
    xt = p.add_noise(x0, noise, t, source=torch.full_like(x0, 5.0))  # source is ignored
    abar = float(p.alphas_cumprod[tval])
    resid = xt - abar ** 0.5 * x0
    n = resid.numel()
    assert abs(float(resid.mean())) < 4 * (1 - abar) ** 0.5 / n ** 0.5 + 1e-7
    assert float(resid.var()) == pytest.approx(1 - abar, rel=0.05)
    # Regressing x_t on x0 recovers sqrt(abar) as the mean slope.
    slope = float(((xt - xt.mean()) * (x0 - x0.mean())).sum() / ((x0 - x0.mean()) ** 2).sum())
    assert slope == pytest.approx(abar ** 0.5, abs=4 * (1 - abar) ** 0.5 / (n * float(x0.var())) ** 0.5 + 1e-6)


@pytest.mark.parametrize("ptype", ["epsilon", "x0", "v"])
def test_targets_roundtrip_through_predict_x0(ptype):
    p = DDPMProcess(prediction_type=ptype)
    x0 = _x0(1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    for tv in ([0, 999], [500, 10]):
        t = torch.tensor(tv)
        xt = p.add_noise(x0, noise, t)
        target = p.training_target(x0, noise, t)
        torch.testing.assert_close(p.predict_x0(target, xt, t), x0, atol=1e-4, rtol=0)
        torch.testing.assert_close(p.predict_epsilon(x0, xt, t), noise, atol=1e-3, rtol=0)
    if ptype == "v":
        t = torch.tensor([300, 300])
        a = p.alphas_cumprod[300].float()
        torch.testing.assert_close(p.training_target(x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0)


def test_set_timesteps_full_respaced_and_start_step():
    p = build_sampler(None, DDPMProcess(1000))
    p.set_timesteps(1000)
    assert torch.equal(p.timesteps, torch.arange(999, -1, -1))
    p.set_timesteps(10)
    assert p.timesteps[0] == 999 and p.timesteps[-1] == 0 and len(p.timesteps) == 10
    for k in (1, 2, 5, 10, 301):
        p.set_timesteps(k, start_step=300)
        ts = p.timesteps
        assert len(ts) == k and ts[0] == 300 and ts.dtype == torch.long
        assert torch.all(torch.diff(ts) < 0)
        if k > 1:
            assert ts[-1] == 0
    p.set_timesteps(4, start_step=300)
    assert p.timesteps.tolist() == [300, 200, 100, 0]
    assert p.previous_timestep(200).tolist() == [100]
    assert p.previous_timestep(torch.tensor([300, 0])).tolist() == [200, -1]


@pytest.mark.parametrize("ptype", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_perfect_predictor_ddim_from_noise_recovers_x0(ptype, k):
    p = DDPMProcess(prediction_type=ptype, sampler="ddim")
    x0 = _x0(4)
    calls: list[int] = []
    out = sample_loop(_perfect(p, x0, calls), p, SHAPE, steps=k, generator=torch.Generator().manual_seed(0))
    assert len(calls) == k
    sampler = build_sampler(None, p)
    sampler.set_timesteps(k)
    assert calls == sampler.timesteps.tolist() and calls[0] == 999
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("ptype", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_perfect_predictor_from_start_step_recovers_x0(ptype, k):
    p = DDPMProcess(prediction_type=ptype, sampler="ddim")
    x0 = _x0(5)
    guess = (x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))).clamp(-1, 1)
    calls: list[int] = []
    out = sample_loop(_perfect(p, x0, calls), p, SHAPE, steps=k, start=guess, start_step=400,
                      generator=torch.Generator().manual_seed(0))
    assert len(calls) == k and calls[0] == 400
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 20])
def test_eta1_ancestral_final_sample_is_x0_with_perfect_predictor(k):
    p = DDPMProcess(prediction_type="x0")  # sampler "ddpm": eta = 1 by default
    x0 = _x0(6)
    calls: list[int] = []
    out = sample_loop(_perfect(p, x0, calls), p, SHAPE, steps=k, generator=torch.Generator().manual_seed(1))
    assert len(calls) == k
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_full_chain_eta1_recovers_x0():
    p = DDPMProcess(100, prediction_type="epsilon")
    x0 = _x0(7)
    calls: list[int] = []
    out = sample_loop(_perfect(p, x0, calls), p, SHAPE, steps=100, generator=torch.Generator().manual_seed(2))
    assert calls == list(range(99, -1, -1))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_initial_state_from_start_is_forward_diffusion():
    p = build_sampler(None, DDPMProcess())
    p.set_timesteps(5, start_step=600)
    start = _x0(8, (1, 1, 16, 16, 16))
    shape = (3, 1, 16, 16, 16)
    g = torch.Generator().manual_seed(11)
    x = p.initial_state(shape, start=start, generator=g)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    a = p.process.alphas_cumprod[600].float()
    torch.testing.assert_close(x, a.sqrt() * start + (1 - a).sqrt() * noise)
    pure = p.initial_state(shape, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(pure, noise)
    with pytest.raises(VoxdiffError):
        p.initial_state(shape, start=torch.zeros(2, 1, 4, 4, 4))


def _noisy_model(x_t, t):
    return 0.5 * x_t  # imperfect: keeps the sampler stochastic all the way


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_seed_reproducibility(sampler):
    p = DDPMProcess(prediction_type="epsilon", sampler=sampler)

    def run(seed, start=None):
        return sample_loop(_noisy_model, p, SHAPE, steps=6, start=start, start_step=None if start is None else 300,
                           generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    start = _x0(2)
    assert torch.equal(run(3, start), run(3, start))
    assert not torch.allclose(run(3, start), run(4, start))


def test_eta_override_and_clipping():
    proc = DDPMProcess(sampler="ddim", prediction_type="x0")
    p = build_sampler(None, proc)
    p.set_timesteps(4)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    big = torch.full(SHAPE, 3.0)
    out = p.step(big, 999, x)
    assert float(out.pred_x0.max()) == 1.0  # clipped to clip_range
    det, sto = build_sampler(None, proc, eta=0.0), build_sampler(None, proc, eta=1.0)
    for s in (det, sto):
        s.set_timesteps(4)
    d1 = det.step(torch.zeros(SHAPE), 999, x, generator=torch.Generator().manual_seed(0)).prev_sample
    d2 = det.step(torch.zeros(SHAPE), 999, x, generator=torch.Generator().manual_seed(1)).prev_sample
    s1 = sto.step(torch.zeros(SHAPE), 999, x, generator=torch.Generator().manual_seed(0)).prev_sample
    s2 = sto.step(torch.zeros(SHAPE), 999, x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.equal(d1, d2) and not torch.allclose(s1, s2)
    q = build_sampler(None, DDPMProcess(sampler="ddim", prediction_type="x0", clip_sample=False))
    q.set_timesteps(4)
    assert float(q.step(big, 999, x).pred_x0.max()) == 3.0
    # The sampler's own clip_sample overrides the checkpoint's (None: off).
    r = build_sampler(None, proc, clip_sample=None)
    r.set_timesteps(4)
    assert float(r.step(big, 999, x).pred_x0.max()) == 3.0


# ---------------------------------------------------------------- agreement with MONAI (reference)

@pytest.mark.parametrize("ours,theirs", [("linear", "linear_beta"), ("scaled_linear", "scaled_linear_beta"),
                                         ("cosine", "cosine")])
def test_alphas_cumprod_match_monai(ours, theirs):
    p = DDPMProcess(1000, beta_schedule=ours)
    ref = DDPMScheduler(num_train_timesteps=1000, schedule=theirs)
    np.testing.assert_allclose(p.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(p.betas.numpy(), ref.betas.double().numpy(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("ptype,monai_ptype", [("epsilon", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
@pytest.mark.parametrize("t,eta", [(500, 0.0), (500, 1.0), (0, 0.0), (100, 0.5)])
def test_ddim_step_matches_monai(ptype, monai_ptype, t, eta):
    # MONAI's DDIM steps t -> t - T//K; with start_step=900, K=10 our visited grid has the same gaps.
    ours = build_sampler("ddim", DDPMProcess(1000, prediction_type=ptype, clip_sample=False), eta=eta)
    ours.set_timesteps(10, start_step=900)
    ref = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type=monai_ptype)
    ref.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPE, generator=g)
    out = torch.randn(SHAPE, generator=g)
    mine = ours.step(out, t, x, generator=torch.Generator().manual_seed(5))
    prev_ref, x0_ref = ref.step(out, t, x, eta=eta, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(mine.pred_x0, x0_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.prev_sample, prev_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ptype,monai_ptype", [("epsilon", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
@pytest.mark.parametrize("t", [999, 500, 20])
def test_full_chain_eta1_step_matches_monai_ddpm_posterior(ptype, monai_ptype, t):
    # K = T with eta = 1 must be the DDPM posterior q(x_{t-1} | x_t, clip(x0_hat)), clipping included.
    ours = build_sampler("ddpm", DDPMProcess(1000, prediction_type=ptype))
    ours.set_timesteps(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, prediction_type=monai_ptype, clip_sample=True)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(SHAPE, generator=g)
    out = torch.randn(SHAPE, generator=g)
    mine = ours.step(out, t, x, generator=torch.Generator().manual_seed(6))
    prev_ref, x0_ref = ref.step(out, t, x, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(mine.pred_x0, x0_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.prev_sample, prev_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [1, 0, 700])
def test_full_chain_eta1_step_is_float64_ddpm_posterior(t):
    # Independent float64 posterior (Ho et al. eq. 7); near t = 0 float32 schedules lose digits in 1 - abar.
    proc = DDPMProcess(1000, prediction_type="epsilon")
    p = build_sampler(None, proc)
    p.set_timesteps(1000)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE, generator=g) * 0.01
    eps = torch.randn(SHAPE, generator=g)
    mine = p.step(eps, t, x, generator=torch.Generator().manual_seed(8)).prev_sample.double()
    ab, beta = proc.alphas_cumprod, proc.betas
    ab_t, ab_prev = ab[t], (ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
    x0 = ((x.double() - (1 - ab_t).sqrt() * eps.double()) / ab_t.sqrt()).clamp(-1, 1)
    mean = ab_prev.sqrt() * beta[t] / (1 - ab_t) * x0 + (1 - beta[t]).sqrt() * (1 - ab_prev) / (1 - ab_t) * x.double()
    var = (1 - ab_prev) / (1 - ab_t) * beta[t]
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8)).double()
    torch.testing.assert_close(mine, mean + var.sqrt() * z, atol=2e-6, rtol=1e-5)
