"""Direct bridge process and its sampler: marginals, objectives and sampling."""

from __future__ import annotations

import pytest
import torch

from voxdiff.diffusion import BridgeProcess, sample_loop
from voxdiff.diffusion.samplers import build_sampler
from voxdiff.errors import VoxdiffError

SHAPE = (2, 1, 4, 4, 4)


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(SHAPE, generator=g)
    y = torch.randn(SHAPE, generator=g) * 0.5 + 1.0
    return x0, y


def _oracle(proc, x0, y):
    """A perfect network for ``proc``'s objective (knows x0)."""
    def fn(x_t, t):
        if proc.prediction_type == "x0":
            return x0
        if proc.prediction_type == "residual":
            return x0 - y
        m = proc.m[t.cpu()].to(x_t.dtype).reshape(-1, 1, 1, 1, 1)
        sig = proc.sigma[t.cpu()].to(x_t.dtype).reshape(-1, 1, 1, 1, 1)
        return torch.where(sig > 0, (x_t - (1 - m) * x0 - m * y) / sig.clamp_min(1e-12), torch.zeros_like(x_t))
    return fn


@pytest.mark.parametrize("schedule", ["linear", "sin", "cosine"])
def test_endpoints_exact(schedule):
    proc = BridgeProcess(num_train_timesteps=50, schedule=schedule, noise_scale=1.0)
    x0, y = _pair()
    noise = torch.randn(SHAPE)
    assert torch.equal(proc.add_noise(x0, noise, torch.zeros(2, dtype=torch.long), source=y), x0)
    assert torch.equal(proc.add_noise(x0, noise, torch.full((2,), 50), source=y), y)
    assert proc.m[0] == 0 and proc.m[-1] == 1 and proc.sigma[0] == 0 and proc.sigma[-1] == 0
    assert torch.all(torch.diff(proc.m) > 0)


def test_mid_marginal_moments():
    proc = BridgeProcess(num_train_timesteps=100, schedule="linear", noise_scale=0.8)
    x0 = torch.tensor(2.0).expand(4000, 1, 1, 1, 1)
    y = torch.tensor(-1.0).expand(4000, 1, 1, 1, 1)
    t = torch.full((4000,), 30)
    g = torch.Generator().manual_seed(1)
    xt = proc.add_noise(x0, torch.randn(x0.shape, generator=g), t, source=y)
    m = 0.3
    var = 2 * 0.8 * (m - m * m)
    assert abs(xt.mean().item() - ((1 - m) * 2.0 + m * -1.0)) < 4 * (var / 4000) ** 0.5
    assert abs(xt.var().item() / var - 1) < 0.1
    assert abs(proc.sigma[30].item() ** 2 - var) < 1e-12


@pytest.mark.parametrize("prediction_type", ["x0", "residual", "epsilon"])
def test_objectives_round_trip(prediction_type):
    proc = BridgeProcess(num_train_timesteps=20, prediction_type=prediction_type)
    x0, y = _pair()
    noise = torch.randn(SHAPE)
    t = torch.tensor([3, 17])
    xt = proc.add_noise(x0, noise, t, source=y)
    target = proc.training_target(x0, noise, t, source=y)
    torch.testing.assert_close(proc.predict_x0(target, xt, t, source=y), x0, atol=1e-5, rtol=0)
    if prediction_type != "x0":
        with pytest.raises(VoxdiffError, match="source"):
            proc.predict_x0(target, xt, t)


@pytest.mark.parametrize("steps", [1, 2, 7, 20])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_deterministic_sampling_recovers_x0(steps, schedule):
    proc = BridgeProcess(num_train_timesteps=20, schedule=schedule, noise_scale=1.0)
    x0, y = _pair()
    out = sample_loop(_oracle(proc, x0, y), proc, SHAPE, steps=steps, source=y, eta=0.0)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction_type", ["residual", "epsilon"])
def test_other_objectives_sample(prediction_type):
    # epsilon cannot recover x0 at t = T (x_T = y is noise-free), so start one step below T.
    proc = BridgeProcess(num_train_timesteps=20, prediction_type=prediction_type)
    x0, y = _pair()
    start_step = 20 if prediction_type == "residual" else 19
    out = sample_loop(_oracle(proc, x0, y), proc, SHAPE, steps=5, source=y, start=x0, start_step=start_step,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_stochastic_sampling_final_and_seeded():
    proc = BridgeProcess(num_train_timesteps=30, noise_scale=1.0, eta=1.0)
    x0, y = _pair()
    fn = _oracle(proc, x0, y)
    a = sample_loop(fn, proc, SHAPE, steps=6, source=y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, x0, atol=1e-5, rtol=0)
    # An imperfect predictor: the noise now matters, and the seed fixes it.
    def noisy(x_t, t):
        return 0.5 * x_t

    runs = [sample_loop(noisy, proc, SHAPE, steps=6, source=y, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    det = [sample_loop(noisy, proc, SHAPE, steps=6, source=y, eta=0.0,
                       generator=torch.Generator().manual_seed(s)) for s in (7, 8)]
    assert torch.equal(det[0], det[1])


def test_stochastic_step_matches_posterior_variance():
    proc = BridgeProcess(num_train_timesteps=10, noise_scale=1.0)
    sampler = build_sampler("bridge", proc, eta=1.0)
    sampler.set_timesteps(5)
    n = 20000
    x0 = torch.zeros(n, 1, 1, 1, 1)
    y = torch.ones(n, 1, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    t = 6
    xt = proc.add_noise(x0, torch.randn(x0.shape, generator=g), torch.full((n,), t), source=y)
    out = sampler.step(x0, t, xt, generator=g, source=y).prev_sample
    # With the true x0 and eta=1 the step samples q(x_s | x_t, x0); marginalising x_t gives q(x_s | x0).
    s = 4
    assert abs(out.mean().item() - proc.m[s].item()) < 0.02
    assert abs(out.var().item() / proc.variance[s].item() - 1) < 0.05


def test_timesteps_and_initial_state():
    proc = build_sampler(None, BridgeProcess(num_train_timesteps=1000))
    proc.set_timesteps(4)
    assert proc.timesteps.tolist() == [1000, 750, 500, 250]
    proc.set_timesteps(3, start_step=300)
    assert proc.timesteps.tolist() == [300, 200, 100]
    proc.set_timesteps(5000, start_step=3)
    assert proc.timesteps.tolist() == [3, 2, 1]
    with pytest.raises(VoxdiffError):
        proc.set_timesteps(4, start_step=0)
    x0, y = _pair()
    proc.set_timesteps(4)
    assert torch.equal(proc.initial_state(SHAPE, source=y), y)
    proc.set_timesteps(4, start_step=500)
    g = torch.Generator().manual_seed(0)
    s0 = proc.initial_state(SHAPE, source=y, start=x0, generator=g)
    g = torch.Generator().manual_seed(0)
    expect = proc.process.add_noise(x0, torch.randn(SHAPE, generator=g), torch.full((2,), 500), source=y)
    torch.testing.assert_close(s0, expect)
    with pytest.raises(VoxdiffError, match="source"):
        proc.initial_state(SHAPE)


def test_sample_timesteps_range_and_seed():
    proc = BridgeProcess(num_train_timesteps=5)
    t = proc.sample_timesteps(2000, generator=torch.Generator().manual_seed(0))
    assert t.min() == 1 and t.max() == 5 and t.dtype == torch.long
    t2 = proc.sample_timesteps(2000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)


def test_zero_noise_bridge_is_deterministic_interpolation():
    proc = BridgeProcess(num_train_timesteps=10, noise_scale=0.0, eta=1.0)
    x0, y = _pair()
    xt = proc.add_noise(x0, torch.randn(SHAPE), torch.full((2,), 4), source=y)
    torch.testing.assert_close(xt, 0.6 * x0 + 0.4 * y)
    out = sample_loop(_oracle(proc, x0, y), proc, SHAPE, steps=3, source=y)
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)


def test_config_round_trip_and_validation():
    proc = BridgeProcess(num_train_timesteps=64, schedule="sin", noise_scale=0.5, prediction_type="residual", eta=0.3)
    again = BridgeProcess(**proc.config())
    assert again.config() == proc.config()
    assert torch.equal(again.sigma, proc.sigma)
    for bad in (dict(schedule="quad"), dict(prediction_type="v"), dict(noise_scale=-1), dict(eta=2.0)):
        with pytest.raises(VoxdiffError):
            BridgeProcess(**bad)
