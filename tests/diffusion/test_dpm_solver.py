"""DPM-Solver++(2M) against exact answers: first-order = DDIM, and sampling Gaussian data with an exact denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from voxdiff.diffusion import DDPMProcess, sample_loop
from voxdiff.diffusion.analytic import GaussianMixtureDenoiser
from voxdiff.diffusion.samplers import build_sampler
from voxdiff.diffusion.samplers.dpm_solver import logsnr_timesteps

SHAPE = (1, 1, 16384, 1, 1)  # voxels are i.i.d. draws: 16k of them fix mean / std to ~0.005
GAUSS = ([0.3], [0.5], None)
MIXTURE = ([-0.5, 0.6], [0.15, 0.2], [0.3, 0.7])


ODE_SHAPE = (1, 1, 2048, 1, 1)  # the ODE comparison is per voxel: few voxels suffice


def _run(oracle, process, sampler, steps, eta=0.0, seed=0, shape=SHAPE):
    return sample_loop(oracle, process, shape, steps=steps, sampler=sampler, sampler_options={"eta": eta},
                       generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def ode_reference():
    """1000-step DDIM (eta 0) solutions per distribution: the probability-flow ODE, nearly exactly."""
    process = DDPMProcess(1000, clip_sample=None)
    return {name: _run(GaussianMixtureDenoiser(process, *comps), process, "ddim", 1000, shape=ODE_SHAPE)
            for name, comps in (("gauss", GAUSS), ("mixture", MIXTURE))}


def test_first_step_is_ddim_and_second_uses_history():
    p = DDPMProcess(1000, clip_sample=None)
    dpm, ddim = build_sampler("dpmsolver++", p, spacing="linear"), build_sampler("ddim", p)
    for s in (dpm, ddim):
        s.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    out = torch.randn(x.shape, generator=g, dtype=torch.float64)
    t0, t1 = dpm.timesteps[:2].tolist()
    a = dpm.step(out, t0, x).prev_sample
    torch.testing.assert_close(a, ddim.step(out, t0, x).prev_sample, atol=1e-10, rtol=1e-10)
    # Second step: D = D0 + (D0 - D_prev) / (2r) with r = h_prev / h, written out independently.
    out2 = torch.randn(x.shape, generator=g, dtype=torch.float64)
    b = dpm.step(out2, t1, a).prev_sample
    abar = p.alphas_cumprod
    t2 = dpm.timesteps[2].item()
    lam = lambda t: 0.5 * math.log(abar[t] / (1 - abar[t]))  # noqa: E731
    x0 = lambda o, xt, t: (xt - (1 - abar[t]).sqrt() * o) / abar[t].sqrt()  # noqa: E731
    d0, d_prev = x0(out2, a, t1), x0(out, x, t0)
    h, h_prev = lam(t2) - lam(t1), lam(t1) - lam(t0)
    d = d0 + (d0 - d_prev) * h / (2 * h_prev)
    expect = ((1 - abar[t2]) / (1 - abar[t1])).sqrt() * a + abar[t2].sqrt() * (1 - math.exp(-h)) * d
    torch.testing.assert_close(b, expect, atol=1e-10, rtol=1e-10)


def test_logsnr_grid_is_distinct_descending_and_even_in_lambda():
    p = DDPMProcess(1000)
    for start, k in ((999, 10), (999, 50), (999, 1000), (250, 20), (20, 21), (5, 1)):
        ts = logsnr_timesteps(p.alphas_cumprod, start, k)
        assert len(ts) == k and ts[0] == start and (k == 1 or ts[-1] == 0)
        assert all(a > b for a, b in zip(ts[:-1], ts[1:]))
    ab = p.alphas_cumprod
    lam = 0.5 * (ab.log() - (1 - ab).log())
    gaps = torch.diff(lam[torch.from_numpy(logsnr_timesteps(ab, 999, 10))])
    assert float(gaps.std() / gaps.mean()) < 0.1


@pytest.mark.parametrize("ptype", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("steps", [10, 20])
def test_reproduces_gaussian_data_as_well_as_ddim50(ptype, steps):
    p = DDPMProcess(1000, prediction_type=ptype, clip_sample=None)
    oracle = GaussianMixtureDenoiser(p, *GAUSS)
    ddim50 = _run(oracle, p, "ddim", 50)
    tol_std = max(1.5 * abs(float(ddim50.std()) - oracle.std), 0.01)
    x = _run(oracle, p, "dpmsolver++", steps)
    assert oracle.calls == 50 + steps
    se = oracle.std / math.sqrt(x.numel())
    assert abs(float(x.mean()) - oracle.mean) < 5 * se + 0.005
    assert abs(float(x.std()) - oracle.std) < tol_std


def test_reproduces_a_gaussian_mixture():
    p = DDPMProcess(1000, clip_sample=None)
    oracle = GaussianMixtureDenoiser(p, *MIXTURE)
    x = _run(oracle, p, "dpmsolver++", 20)
    assert abs(float(x.mean()) - oracle.mean) < 0.02 and abs(float(x.std()) - oracle.std) < 0.02
    # The mode weights survive: the share of samples nearer the upper mode is its weight 0.7.
    assert abs(float((x > 0.05).double().mean()) - 0.7) < 0.02


@pytest.mark.parametrize("name", ["gauss", "mixture"])
@pytest.mark.parametrize("spacing", ["logsnr", "linear"])
def test_second_order_beats_ddim_on_the_probability_flow_ode(ode_reference, name, spacing):
    p = DDPMProcess(1000, clip_sample=None)
    oracle = GaussianMixtureDenoiser(p, *(GAUSS if name == "gauss" else MIXTURE))
    ref = ode_reference[name]
    dpm = sample_loop(oracle, p, ODE_SHAPE, steps=10, sampler="dpmsolver++", sampler_options={"spacing": spacing},
                      generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddim = _run(oracle, p, "ddim", 10, shape=ODE_SHAPE)
    err = lambda x: float((x - ref).pow(2).mean().sqrt())  # noqa: E731
    assert err(dpm) < err(ddim)


def test_pd_start_solves_from_t_prime_to_zero():
    p = DDPMProcess(1000, clip_sample=None)
    oracle = GaussianMixtureDenoiser(p, *GAUSS)
    start = torch.full(SHAPE, 0.3, dtype=torch.float64)  # the data mean as the guess, diffused to t'
    calls = []

    def fn(x, t):
        calls.append(int(t[0]))
        return oracle(x, t)

    x = sample_loop(fn, p, SHAPE, steps=8, sampler="dpmsolver++", start=start, start_step=400,
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert calls[0] == 400 and calls[-1] == 0 and len(calls) == 8
    # From q(x_t' | mean): the result is the ODE image of a narrower Gaussian, centred on the data mean.
    assert abs(float(x.mean()) - 0.3) < 0.01 and float(x.std()) < 0.5
