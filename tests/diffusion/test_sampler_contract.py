"""The sampler contract, checked for every registered (process kind x sampler) pair."""

from __future__ import annotations

import pytest
import torch

from voxdiff.diffusion import BridgeProcess, DDPMProcess, sample_loop
from voxdiff.diffusion.samplers import SAMPLERS, build_sampler, sampler_names
from voxdiff.errors import VoxdiffError

SHAPE = (2, 1, 4, 4, 3)
PROCESSES = {
    "ddpm": lambda ptype="x0": DDPMProcess(num_train_timesteps=60, prediction_type=ptype),
    "bridge": lambda ptype="x0": BridgeProcess(num_train_timesteps=30, noise_scale=0.5, prediction_type=ptype),
}
PAIRS = [(kind, name) for name, cls in SAMPLERS.items() for kind in cls.process_kinds]
# The most stochastic setting each sampler allows (deterministic solvers take only eta = 0).
MAX_ETA = {"ddpm": 1.0, "ddim": 1.0, "bridge": 1.0, "dpmsolver++": 0.0}


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(SHAPE, generator=g) * 1.6 - 0.8  # inside [-1, 1]: clipping never binds
    y = torch.rand(SHAPE, generator=g) * 1.6 - 0.8
    return x0, y


def _oracle(process, x0, y, calls=None):
    """What a perfect network outputs for the process's prediction type."""
    def fn(x_t, t):
        if calls is not None:
            calls.append(int(t[0]))
        if process.prediction_type == "x0":
            return x0.clone()
        if process.prediction_type == "residual":
            return x0 - y
        abar = process.alphas_cumprod[t].to(x_t.dtype).reshape(-1, 1, 1, 1, 1)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return eps if process.prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
    return fn


def _imperfect(x_t, t):
    return 0.5 * x_t - 0.001 * t.to(x_t.dtype).reshape(-1, 1, 1, 1, 1)


def _source(kind, y):
    return y if kind == "bridge" else None


def test_registry_lists_every_pair_and_defaults():
    assert sampler_names("ddpm") == ["ddpm", "ddim", "dpmsolver++"]
    assert sampler_names("bridge") == ["bridge"]
    assert build_sampler(None, DDPMProcess(10)).name == "ddpm"
    assert build_sampler(None, DDPMProcess(10, sampler="dpmsolver++")).name == "dpmsolver++"
    assert build_sampler(None, BridgeProcess(10)).name == "bridge"


@pytest.mark.parametrize("kind,name", PAIRS)
def test_shapes_and_seeded_determinism(kind, name):
    proc = PROCESSES[kind]()
    x0, y = _data()
    opts = {"eta": MAX_ETA[name]}

    def run(seed):
        return sample_loop(_imperfect, proc, SHAPE, steps=5, sampler=name, sampler_options=opts,
                           source=_source(kind, y), generator=torch.Generator().manual_seed(seed))

    a, b = run(0), run(0)
    assert a.shape == SHAPE and a.dtype == torch.float32
    assert torch.equal(a, b)
    if MAX_ETA[name] > 0 or kind == "ddpm":  # DDPM chains start from seeded noise
        assert not torch.allclose(a, run(1))
    s = build_sampler(name, proc, **opts)
    s.set_timesteps(5)
    x = s.initial_state(SHAPE, source=_source(kind, y), generator=torch.Generator().manual_seed(0))
    out = s.step(_imperfect(x, torch.full((2,), int(s.timesteps[0]))), int(s.timesteps[0]), x,
                 generator=torch.Generator().manual_seed(0), source=_source(kind, y))
    assert out.prev_sample.shape == SHAPE and out.pred_x0.shape == SHAPE


@pytest.mark.parametrize("kind,name", PAIRS)
@pytest.mark.parametrize("k", [1, 2, 7])
def test_perfect_predictor_returns_x0(kind, name, k):
    ptypes = ("x0", "epsilon", "v") if kind == "ddpm" else ("x0", "residual")
    for ptype in ptypes:
        proc = PROCESSES[kind](ptype)
        x0, y = _data(1)
        calls: list[int] = []
        out = sample_loop(_oracle(proc, x0, y, calls), proc, SHAPE, steps=k, sampler=name,
                          sampler_options={"eta": MAX_ETA[name]}, source=_source(kind, y),
                          generator=torch.Generator().manual_seed(3))
        assert len(calls) == k
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind,name", PAIRS)
def test_last_step_returns_the_clean_estimate(kind, name):
    proc = PROCESSES[kind]()
    x0, y = _data(2)
    s = build_sampler(name, proc, eta=MAX_ETA[name])
    s.set_timesteps(4)
    x = s.initial_state(SHAPE, source=_source(kind, y), generator=torch.Generator().manual_seed(0))
    for t in s.timesteps.tolist():
        out = s.step(_imperfect(x, torch.full((2,), t)), t, x, generator=torch.Generator().manual_seed(t),
                     source=_source(kind, y))
        x = out.prev_sample
    assert torch.equal(out.prev_sample, out.pred_x0)


@pytest.mark.parametrize("kind,name", PAIRS)
@pytest.mark.parametrize("k", [1, 3, 6])
def test_start_step_starts_at_t_prime_and_calls_once_per_step(kind, name, k):
    proc = PROCESSES[kind]()
    x0, y = _data(3)
    t_prime = 20
    calls: list[int] = []
    out = sample_loop(_oracle(proc, x0, y, calls), proc, SHAPE, steps=k, sampler=name, start=x0 + 0.1,
                      start_step=t_prime, source=_source(kind, y), generator=torch.Generator().manual_seed(0))
    assert len(calls) == k and calls[0] == t_prime and all(c <= t_prime for c in calls)
    assert calls == sorted(set(calls), reverse=True)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    # The start state is the forward process of the guess at t'.
    s = build_sampler(name, proc)
    s.set_timesteps(k, start_step=t_prime)
    state = s.initial_state(SHAPE, source=_source(kind, y), start=x0, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    expect = proc.add_noise(x0, noise, torch.full((2,), t_prime), source=_source(kind, y))
    torch.testing.assert_close(state, expect)


@pytest.mark.parametrize("kind,name", PAIRS)
def test_reused_sampler_gives_the_same_chain(kind, name):
    proc = PROCESSES[kind]()
    _, y = _data(4)
    s = build_sampler(name, proc, eta=MAX_ETA[name])
    runs = [sample_loop(_imperfect, proc, SHAPE, steps=6, sampler=s, source=_source(kind, y),
                        generator=torch.Generator().manual_seed(2)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("kind,name", PAIRS)
def test_misuse_raises_voxdiff_error(kind, name):
    proc = PROCESSES[kind]()
    s = build_sampler(name, proc)
    T = proc.num_train_timesteps
    for bad_steps in (0, -3, 2.5, "many"):
        with pytest.raises(VoxdiffError, match="steps"):
            s.set_timesteps(bad_steps)
    for bad_start in (-1, T + 1, 3.5):
        with pytest.raises(VoxdiffError, match="start_step"):
            s.set_timesteps(1, start_step=bad_start)
    for bad_eta in (-0.1, 1.5, "x"):
        with pytest.raises(VoxdiffError, match="eta"):
            build_sampler(name, proc, eta=bad_eta)
    with pytest.raises(VoxdiffError, match="clip_sample"):
        build_sampler(name, proc, clip_sample=-1.0)
    with pytest.raises(VoxdiffError, match="option"):
        build_sampler(name, proc, order=3)
    if kind == "ddpm":
        with pytest.raises(VoxdiffError, match="steps"):
            s.set_timesteps(T + 1)
        with pytest.raises(VoxdiffError, match="start"):
            s.set_timesteps(2, start_step=5)
            s.initial_state(SHAPE, start=torch.zeros(3, 1, 2, 2, 2))


def test_deterministic_solver_refuses_stochastic_eta():
    with pytest.raises(VoxdiffError, match="deterministic"):
        build_sampler("dpmsolver++", DDPMProcess(10), eta=0.5)
    assert build_sampler("dpmsolver++", DDPMProcess(10), eta=0.0).options["eta"] == 0.0


@pytest.mark.parametrize("kind", list(PROCESSES))
def test_incompatible_or_unknown_sampler_names_the_valid_ones(kind):
    proc = PROCESSES[kind]()
    valid = sampler_names(kind)
    for bad in [n for n in SAMPLERS if n not in valid] + ["euler"]:
        with pytest.raises(VoxdiffError) as err:
            build_sampler(bad, proc)
        assert all(v in str(err.value) for v in valid)
        with pytest.raises(VoxdiffError):
            sample_loop(_imperfect, proc, SHAPE, steps=2, sampler=bad)
    with pytest.raises(VoxdiffError):
        SAMPLERS[[n for n in SAMPLERS if n not in valid][0]](proc)


def test_sample_loop_eta_keyword_overrides_options_and_built_samplers_take_none():
    proc = DDPMProcess(40, sampler="ddim")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = sample_loop(_imperfect, proc, SHAPE, steps=4, eta=1.0, sampler_options={"eta": 0.0}, generator=g())
    b = sample_loop(_imperfect, proc, SHAPE, steps=4, sampler="ddim", sampler_options={"eta": 1.0}, generator=g())
    assert torch.equal(a, b)
    s = build_sampler("ddim", proc)
    with pytest.raises(VoxdiffError):
        sample_loop(_imperfect, proc, SHAPE, steps=4, sampler=s, eta=0.5)
    with pytest.raises(VoxdiffError):
        sample_loop(_imperfect, DDPMProcess(40), SHAPE, steps=4, sampler=s)
