"""3D UNet backbone and the PPDM puzzle wrapper."""

from __future__ import annotations

import time

import pytest
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.nets import PuzzleNet, UNet3D
from voxdiff.nets.factory import build_network
from voxdiff.nets.unet import group_count


@pytest.fixture(autouse=True)
def _one_thread():
    # conv3d on tiny volumes gains nothing from threads, and two threads slow ~10x when
    # the two cores are shared with other work.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kw,size", [
    (dict(in_channels=2, out_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1), 8),
    (dict(in_channels=1, out_channels=1, base_channels=6, channel_mults=(1, 2, 2), num_res_blocks=2,
          norm_groups=4, upsample="transpose"), 8),
    (dict(in_channels=1, out_channels=2, base_channels=8, channel_mults=(1,), num_res_blocks=1), 5),
])
def test_unet_shapes(kw, size):
    net = UNet3D(**kw)
    x = torch.randn(2, kw["in_channels"], size, size, 2 * size if size % 2 == 0 else size)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == (2, kw["out_channels"], *x.shape[2:])
    assert torch.isfinite(out).all()
    assert net.required_multiple == 2 ** (len(kw["channel_mults"]) - 1)


def test_time_conditioning_matters_and_untimed_net():
    torch.manual_seed(0)
    net = UNet3D(1, 1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1)
    with torch.no_grad():
        net.conv_out.weight.normal_(std=0.5)  # amplify so the t-dependence is visible
    x = torch.randn(1, 1, 4, 4, 4)
    assert not torch.allclose(net(x, torch.tensor([1])), net(x, torch.tensor([500])))
    torch.testing.assert_close(net(x, 7), net(x, torch.tensor([7])))
    with pytest.raises(VoxdiffError, match="timesteps"):
        net(x, None)
    seg = UNet3D(1, 2, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, time_conditioned=False)
    assert seg(x, None).shape == (1, 2, 4, 4, 4)
    assert seg.time_embed is None


def test_attention_levels():
    net = UNet3D(1, 1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 attention_heads=2)
    n_attn = sum(type(m).__name__ == "Attention3D" for m in net.modules())
    assert n_attn == 2  # encoder level 1 and the bottleneck (level 1 is the deepest); none at level 0
    x = torch.randn(2, 1, 8, 8, 8, requires_grad=True)
    out = net(x, torch.tensor([3, 4]))
    assert out.shape == x.shape
    out.sum().backward()
    attn = next(m for m in net.modules() if type(m).__name__ == "Attention3D")
    assert attn.qkv.weight.grad is not None and attn.qkv.weight.grad.abs().sum() > 0
    # Attention mixes information across the whole volume: a change in one corner moves the far corner.
    net0 = UNet3D(1, 1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_levels=(0,))
    with torch.no_grad():
        for m in net0.modules():
            if type(m).__name__ == "Attention3D":
                m.proj.weight.normal_()
        a = torch.zeros(1, 1, 8, 8, 8)
        b = a.clone()
        b[0, 0, 0, 0, 0] = 5.0
        assert (net0(a, 1)[0, 0, -1, -1, -1] - net0(b, 1)[0, 0, -1, -1, -1]).abs() > 1e-6


def test_gradient_checkpointing_identical():
    torch.manual_seed(0)
    kw = dict(in_channels=2, out_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
              attention_levels=(1,), dropout=0.1)
    plain = UNet3D(**kw)
    ckpt = UNet3D(**kw, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 4, 4, 4)
    t = torch.tensor([5, 50])
    results = []
    for net in (plain, ckpt):
        net.train()
        torch.manual_seed(123)  # same dropout masks
        out = net(x, t)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    for name, g in results[0][1].items():
        torch.testing.assert_close(g, results[1][1][name], atol=1e-6, rtol=1e-5)


def test_bad_sizes_raise():
    net = UNet3D(1, 1, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1)
    assert net.required_multiple == 4
    with pytest.raises(VoxdiffError, match="divisible by 4"):
        net(torch.randn(1, 1, 8, 8, 6), 1)
    with pytest.raises(VoxdiffError, match="input channels"):
        net(torch.randn(1, 2, 8, 8, 8), 1)
    with pytest.raises(VoxdiffError):
        UNet3D(1, 1, channel_mults=(1, 2), attention_levels=(2,))


def test_group_count():
    assert group_count(48, 32) == 24
    assert group_count(6, 8) == 6
    assert group_count(7, 8) == 7
    assert group_count(10, 4) == 2


def test_config_rebuild():
    net = UNet3D(1, 2, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,))
    again = UNet3D(**net.config())
    again.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 4, 4, 4)
    torch.testing.assert_close(again(x, 3), net(x, 3))


def _unet(**kw):
    return {"kind": "unet", "base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, **kw}


def test_puzzle_net_shapes():
    net = build_network(_unet(), in_channels=1, cond_channels=2, out_channels=1, puzzle_factor=2)
    assert net.backbone.in_channels == 3 * 8 and net.backbone.out_channels == 8
    assert net.required_multiple == 4
    x, y = torch.randn(2, 1, 8, 8, 16), torch.randn(2, 2, 8, 8, 16)
    out = net(x, torch.tensor([1, 2]), y)
    assert out.shape == (2, 1, 8, 8, 16)
    with pytest.raises(VoxdiffError, match="divisible by"):
        net(torch.randn(1, 1, 8, 8, 6), 1, torch.randn(1, 2, 8, 8, 6))
    with pytest.raises(VoxdiffError, match="condition"):
        net(x, 1, torch.randn(2, 2, 8, 8, 8))
    aniso = build_network(_unet(), in_channels=1, cond_channels=0, out_channels=1, puzzle_factor=(1, 2, 2))
    assert aniso.required_multiple == (2, 4, 4)
    assert aniso(torch.randn(1, 1, 2, 4, 8), 1).shape == (1, 1, 2, 4, 8)


def test_puzzle_net_is_local_within_blocks():
    # A 1x1x1-conv backbone sees only one puzzle block: voxels in other blocks must not change.
    backbone = torch.nn.Conv3d(16, 8, 1)
    net = PuzzleNet(lambda_backbone(backbone), 2, 1)
    x, y = torch.randn(1, 1, 4, 4, 4), torch.randn(1, 1, 4, 4, 4)
    base = net(x, None, y)
    x2 = x.clone()
    x2[0, 0, 0, 0, 0] += 1.0
    diff = (net(x2, None, y) - base).abs()[0, 0] > 0
    assert diff[:2, :2, :2].any() and not diff[2:].any() and not diff[:, 2:].any() and not diff[:, :, 2:].any()


def lambda_backbone(conv):
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, h, t):
            return self.conv(h)
    return Wrap()


def test_puzzle_net_overfits_tiny_pair():
    torch.manual_seed(0)
    net = build_network(_unet(base_channels=16, channel_mults=(1, 1)), in_channels=1, cond_channels=1,
                        out_channels=1, puzzle_factor=2)
    g = torch.Generator().manual_seed(0)
    coords = torch.linspace(-1, 1, 16)
    zz, yy, xx = torch.meshgrid(coords, coords, coords, indexing="ij")
    target = (torch.sin(3 * xx) * torch.cos(2 * yy) + 0.5 * zz)[None, None]
    source = torch.tanh(2 * target) + 0.05 * torch.randn(target.shape, generator=g)
    x_t = 0.5 * (target + source)
    t = torch.tensor([500])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x_t, t, source), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - t0
    print(f"overfit: loss {losses[0]:.4f} -> {losses[-1]:.5f} in {elapsed:.1f}s")
    assert losses[-1] < losses[0] / 10
