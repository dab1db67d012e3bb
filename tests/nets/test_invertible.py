"""Invertible 3D UNet (IDM): exact inverses, memory-saving gradients, orthogonal resampling, bf16, RNG replay."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.nets.invertible import (AdditiveCoupling, AffineCoupling, InvertibleAttention, InvertibleDownsample,
                                     InvertibleSequential, InvertibleUNet, InvertibleUpsample, haar_matrix_3d,
                                     saved_activation_bytes)

TEMB = 8


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _randomize(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Move orthogonal generators off the Haar start so tests see a general orthogonal mix."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("generator"):
                p.normal_(0.0, std)
    return module


def _block(kind: str, channels: int = 4) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """A non-trivial block (zero_init off) and the channel/spatial shape of its input."""
    if kind == "additive":
        return AdditiveCoupling(channels, TEMB, zero_init=False), (channels, 8, 8, 8)
    if kind == "affine":
        return AffineCoupling(channels, TEMB, zero_init=False, swap=True), (channels, 8, 8, 8)
    if kind == "attention":
        return InvertibleAttention(channels, TEMB, num_heads=2, zero_init=False), (channels, 4, 4, 4)
    if kind == "down":
        return _randomize(InvertibleDownsample(channels)), (channels, 8, 8, 8)
    if kind == "up":
        return _randomize(InvertibleUpsample(channels)), (8 * channels, 4, 4, 4)
    raise AssertionError(kind)


BLOCKS = ["additive", "affine", "attention", "down", "up"]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("kind", BLOCKS)
def test_block_inverse_recovers_input(kind, dtype, tol):
    torch.manual_seed(0)
    block, shape = _block(kind)
    block = block.to(dtype)
    x = torch.randn(2, *shape, dtype=dtype)
    temb = torch.randn(2, TEMB, dtype=dtype)
    with torch.no_grad():
        y = block(x, temb)
        back = block.inverse(y, temb)
    assert back.shape == x.shape and back.dtype == dtype
    assert _rel(back, x) < tol
    if kind in ("additive", "affine", "attention"):
        assert y.shape == x.shape and _rel(y, x) > 1e-2  # the block really changes its input


def _small_unet(**kw) -> InvertibleUNet:
    cfg = dict(in_channels=1, out_channels=2, base_channels=8, levels=3, blocks_per_level=1,
               attention_levels=(2,), zero_init=False)
    cfg.update(kw)
    return _randomize(InvertibleUNet(**cfg))


@pytest.mark.parametrize("coupling", ["additive", "affine"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_core_inverse_recovers_input(coupling, dtype, tol):
    torch.manual_seed(1)
    net = _small_unet(coupling=coupling).to(dtype).eval()
    h = torch.randn(2, 8, 8, 8, 8, dtype=dtype)
    with torch.no_grad():
        temb = net.embed_time(torch.tensor([5, 700]), 2, "cpu")
        y = net.core_forward(h, temb)
        back = net.core_inverse(y, temb)
    assert y.shape == h.shape and y.dtype == dtype
    assert _rel(y, h) > 0.1
    assert _rel(back, h) < tol


def _grads(module, inputs, temb, weight, call):
    """Gradients of a fixed random projection of the output w.r.t. inputs, temb and parameters."""
    module.zero_grad(set_to_none=True)
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    temb = temb.detach().clone().requires_grad_(True)
    out = call(module, *inputs, temb)
    (out * weight).sum().backward()
    grads = {"input": inputs[0].grad, "temb": temb.grad}
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return grads


def _assert_same_grads(a: dict, b: dict, tol: float) -> None:
    """Per tensor, relative error < tol. Biases right before a per-channel GroupNorm have an exactly
    zero true gradient (float noise only), so the scale is floored at 1e-3 of the largest gradient."""
    assert a.keys() == b.keys()
    floor = 1e-3 * max(g.norm().item() for g in b.values() if g is not None)
    for name in a:
        if b[name] is None:
            assert a[name] is None or a[name].abs().max() == 0, name
            continue
        assert a[name] is not None, name
        err = (a[name] - b[name]).norm().item() / max(b[name].norm().item(), floor)
        assert err < tol, (name, err)


def _seq_call(seq, x, temb):
    return seq(x, temb)


@pytest.mark.parametrize("kind", BLOCKS + ["chain"])
def test_memory_saving_gradients_match_plain(kind):
    torch.manual_seed(2)
    if kind == "chain":
        ops = [AdditiveCoupling(4, TEMB, zero_init=False), AffineCoupling(4, TEMB, zero_init=False, swap=True),
               InvertibleAttention(4, TEMB, num_heads=2, zero_init=False), _randomize(InvertibleDownsample(4)),
               AdditiveCoupling(32, TEMB, zero_init=False), _randomize(InvertibleUpsample(4))]
        shape = (4, 8, 8, 8)
    else:
        block, shape = _block(kind)
        ops = [block]
    saving = InvertibleSequential(*ops, memory_saving=True)
    plain = copy.deepcopy(saving)
    plain.memory_saving = False
    x = torch.randn(2, *shape)
    temb = torch.randn(2, TEMB)
    with torch.no_grad():
        weight = torch.randn_like(plain(x, temb))
    g_save = _grads(saving, [x], temb, weight, _seq_call)
    g_plain = _grads(plain, [x], temb, weight, _seq_call)
    if kind not in ("down", "up"):
        assert g_plain["temb"] is not None and g_plain["temb"].abs().max() > 0
    _assert_same_grads(g_save, g_plain, 1e-4)


def _unet_call(net, x, temb_unused):
    return net(x, torch.tensor([3, 800]))


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_unet_memory_saving_gradients_match_plain(coupling):
    torch.manual_seed(3)
    saving = _small_unet(coupling=coupling, memory_saving=True)
    plain = copy.deepcopy(saving)
    plain.memory_saving = False
    x = torch.randn(2, 1, 8, 8, 8)
    weight = torch.randn(2, 2, 8, 8, 8)
    g_save = _grads(saving, [x], torch.zeros(1), weight, _unet_call)
    g_plain = _grads(plain, [x], torch.zeros(1), weight, _unet_call)
    # The timestep MLP only gets gradients through the core's temb input: they must flow.
    assert g_save["time_embed.mlp.0.weight"].abs().max() > 0
    _assert_same_grads(g_save, g_plain, 1e-4)


def test_memory_saving_stores_only_the_core_output():
    torch.manual_seed(4)
    x = torch.randn(1, 1, 16, 16, 16)
    t = torch.tensor([10])
    sizes = {}
    for ms in (True, False):
        for blocks in (1, 2):
            net = _small_unet(blocks_per_level=blocks, memory_saving=ms)
            sizes[ms, blocks] = saved_activation_bytes(net, x, t)
    # Memory saving: what remains is the head (input x, the core output and the head's norm/SiLU)
    # so doubling depth changes nothing; plain autograd grows with depth.
    assert sizes[True, 1] == sizes[True, 2]
    core_out = 8 * 16 ** 3 * 4
    assert sizes[True, 1] <= 4 * core_out
    assert sizes[False, 2] > 1.5 * sizes[False, 1] > 10 * sizes[True, 1]


def test_orthogonal_downsampling_is_haar_at_init_and_norm_preserving():
    h = haar_matrix_3d(torch.float64)
    assert torch.allclose(h @ h.T, torch.eye(8, dtype=torch.float64), atol=1e-14)
    down = InvertibleDownsample(3).double()
    assert torch.allclose(down.matrix(), h.expand(3, 8, 8), atol=1e-14)
    x = torch.randn(2, 3, 4, 6, 8, dtype=torch.float64)
    y = down(x)
    assert y.shape == (2, 24, 2, 3, 4)
    # Band 0 of each channel is the low-pass: block sum / sqrt(8).
    block_sum = x.reshape(2, 3, 2, 2, 3, 2, 4, 2).sum(dim=(3, 5, 7))
    assert torch.allclose(y[:, 0::8], block_sum / math.sqrt(8.0), atol=1e-12)
    # Off the Haar start the mix stays orthogonal, so norms are preserved exactly.
    _randomize(down, std=1.0)
    m = down.matrix()
    assert not torch.allclose(m, h.expand(3, 8, 8), atol=1e-3)
    assert torch.allclose(m @ m.transpose(-1, -2), torch.eye(8, dtype=torch.float64).expand(3, 8, 8), atol=1e-12)
    y = down(x)
    assert abs(y.norm().item() - x.norm().item()) < 1e-10 * x.norm().item()
    assert torch.allclose(down.inverse(y), x, atol=1e-12)
    # At init the decoder's upsampling undoes the encoder's downsampling.
    up = InvertibleUpsample(3).double()
    assert torch.allclose(up(InvertibleDownsample(3).double()(x)), x, atol=1e-12)


def test_unet_backbone_contract():
    torch.manual_seed(5)
    net = InvertibleUNet(2, 3, base_channels=8, levels=2, blocks_per_level=1)
    assert net.required_multiple == 2
    x = torch.randn(2, 2, 8, 8, 4)
    for t in (torch.tensor([1, 2]), torch.tensor([0.5, 10.0]), 7, None):
        assert net(x, t).shape == (2, 3, 8, 8, 4)
    rebuilt = InvertibleUNet(**net.config())
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x, torch.tensor([1, 2])), net(x, torch.tensor([1, 2])))
    with pytest.raises(VoxdiffError, match="divisible by 4"):
        InvertibleUNet(1, 1, base_channels=4, levels=3)(torch.randn(1, 1, 8, 8, 6), torch.tensor([0]))
    with pytest.raises(VoxdiffError, match="coupling"):
        InvertibleUNet(1, 1, coupling="spline")


def test_unet_inside_puzzle_net():
    from voxdiff.nets.factory import build_network

    torch.manual_seed(6)
    net = build_network({"kind": "invertible", "base_channels": 8, "levels": 2, "blocks_per_level": 1},
                        in_channels=1, cond_channels=1, out_channels=1, puzzle_factor=2)
    assert net.required_multiple == 4
    x, cond = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 1, 8, 8, 8)
    out = net(x, torch.tensor([4]), cond=cond)
    assert out.shape == (1, 1, 8, 8, 8)
    out.square().mean().backward()
    assert net.backbone.conv_in.weight.grad.abs().max() > 0


def _dropout_seq(preserve: bool, memory_saving: bool) -> InvertibleSequential:
    torch.manual_seed(7)
    return InvertibleSequential(AdditiveCoupling(4, TEMB, dropout=0.5, zero_init=False),
                                AffineCoupling(4, TEMB, dropout=0.5, zero_init=False, swap=True),
                                memory_saving=memory_saving, preserve_rng_state=preserve).train()


def _dropout_grads(seq, x, temb, weight):
    torch.manual_seed(123)
    grads = _grads(seq, [x], temb, weight, _seq_call)
    return grads, torch.get_rng_state()


def test_dropout_gradients_need_rng_restoration():
    x, temb = torch.randn(2, 4, 8, 8, 8), torch.randn(2, TEMB)
    weight = torch.randn(2, 4, 8, 8, 8)
    plain, rng_plain = _dropout_grads(_dropout_seq(True, False), x, temb, weight)
    saving, rng_saving = _dropout_grads(_dropout_seq(True, True), x, temb, weight)
    _assert_same_grads(saving, plain, 1e-4)
    # The recomputation replays the RNG in a fork: the caller's RNG stream is untouched.
    assert torch.equal(rng_plain, rng_saving)
    # Without restoring the RNG the recomputed dropout masks differ and so do the gradients.
    broken, _ = _dropout_grads(_dropout_seq(False, True), x, temb, weight)
    assert _rel(broken["input"], plain["input"]) > 1e-2


def test_bf16_autocast_forward_backward():
    torch.manual_seed(8)
    saving = _small_unet(levels=2, attention_levels=(1,), blocks_per_level=2, memory_saving=True)
    plain = copy.deepcopy(saving)
    plain.memory_saving = False
    x = torch.randn(2, 1, 8, 8, 8)
    weight = torch.randn(2, 2, 8, 8, 8)

    # The recomputation must run in the forward's dtype: record conv output dtypes in backward.
    seen = []
    conv = saving.core[0].net.conv1
    handle = conv.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))

    def run(net):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, torch.tensor([3, 800]))
        (out.float() * weight).sum().backward()
        return {n: p.grad for n, p in net.named_parameters()}

    g_save, g_plain = run(saving), run(plain)
    handle.remove()
    assert (True, torch.bfloat16) in seen  # the recompute (grad enabled) ran in bf16
    assert all(dt == torch.bfloat16 for _, dt in seen)
    for name, g in g_save.items():
        assert g is not None and torch.isfinite(g).all(), name
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])  # noqa: E731
    # Measured ~2e-4 here; an fp32 recompute would be off by the bf16 rounding itself (~4e-3).
    assert _rel(flat(g_save), flat(g_plain)) < 2e-3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.randn(2, 8, 8, 8, 8)
        temb = saving.embed_time(torch.tensor([3, 800]), 2, "cpu")
        y = saving.core_forward(h, temb)
        back = saving.core_inverse(y, temb)
    assert y.dtype == torch.float32  # the core state stays float32 under autocast
    assert _rel(back, h) < 3e-2  # bf16 sub-networks: ~1e-3..1e-2, documented in docs/idm.md


def test_memory_saving_chain_passes_gradcheck():
    """Finite differences agree with the inversion-based backward (input and temb gradients, float64)."""
    torch.manual_seed(9)
    seq = InvertibleSequential(AffineCoupling(2, 3, zero_init=False), _randomize(InvertibleDownsample(2)),
                               AdditiveCoupling(16, 3, zero_init=False, swap=True), _randomize(InvertibleUpsample(2)),
                               memory_saving=True).double()
    x = torch.randn(1, 2, 4, 4, 2, dtype=torch.float64, requires_grad=True)
    temb = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(seq, (x, temb), eps=1e-6, atol=1e-6, fast_mode=True)
