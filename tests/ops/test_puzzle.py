"""Pixel puzzling (space-to-channel) and padding helpers."""

from __future__ import annotations

import pytest
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.ops import crop_to, pad_to_multiple, puzzle, unpuzzle


def _random(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype == torch.int64:
        return torch.randint(-1000, 1000, shape, generator=g)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.bool])
@pytest.mark.parametrize("shape,factor", [
    ((1, 1, 8, 8, 8), 2),
    ((2, 3, 8, 12, 16), 2),
    ((1, 2, 8, 8, 16), 4),
    ((2, 1, 4, 8, 16), (1, 2, 4)),
])
def test_round_trip_bitwise(shape, factor, dtype):
    x = _random(shape, dtype)
    p = puzzle(x, factor)
    r = (factor,) * 3 if isinstance(factor, int) else factor
    assert p.shape == (shape[0], shape[1] * r[0] * r[1] * r[2], shape[2] // r[0], shape[3] // r[1], shape[4] // r[2])
    assert p.dtype == dtype
    back = unpuzzle(p, factor)
    assert back.dtype == dtype and back.shape == x.shape
    assert torch.equal(back, x)


def test_round_trip_bf16_bit_patterns():
    # torch.equal on bf16 compares values; compare the raw bits too (incl. -0.0 and NaN).
    x = _random((1, 1, 4, 4, 4), torch.bfloat16)
    x[0, 0, 0, 0, 0] = -0.0
    x[0, 0, 1, 0, 0] = float("nan")
    back = unpuzzle(puzzle(x, 2), 2)
    assert torch.equal(back.view(torch.int16), x.view(torch.int16))


def test_channel_layout_matches_pixel_unshuffle():
    x = torch.arange(2 * 3 * 4 * 6 * 8, dtype=torch.float32).reshape(2, 3, 4, 6, 8)
    rd, rh, rw = 2, 3, 4
    p = puzzle(x, (rd, rh, rw))
    b, c, i, j, k, d, h, w = 1, 2, 1, 2, 3, 1, 1, 1
    assert p[b, c * rd * rh * rw + i * rh * rw + j * rw + k, d, h, w] == x[b, c, d * rd + i, h * rh + j, w * rw + k]
    # With depth factor 1 it must coincide with torch's 2D PixelUnshuffle applied per slice.
    y = torch.randn(1, 2, 3, 8, 8)
    p3 = puzzle(y, (1, 2, 2))
    p2 = torch.nn.functional.pixel_unshuffle(y.permute(0, 2, 1, 3, 4).reshape(3, 2, 8, 8), 2)
    assert torch.equal(p3, p2.reshape(1, 3, 8, 4, 4).permute(0, 2, 1, 3, 4))


def test_non_dividing_shape_raises():
    with pytest.raises(VoxdiffError, match=r"\(8, 9, 8\).*\(2, 2, 2\)"):
        puzzle(torch.zeros(1, 1, 8, 9, 8), 2)
    with pytest.raises(VoxdiffError, match="channel"):
        unpuzzle(torch.zeros(1, 3, 2, 2, 2), 2)
    with pytest.raises(VoxdiffError):
        puzzle(torch.zeros(8, 8, 8), 2)
    with pytest.raises(VoxdiffError):
        puzzle(torch.zeros(1, 1, 8, 8, 8), (2, 2))


@pytest.mark.parametrize("mode", ["constant", "replicate", "reflect"])
@pytest.mark.parametrize("multiple", [4, (1, 4, 8)])
def test_pad_crop_round_trip(mode, multiple):
    x = torch.randn(2, 1, 7, 9, 13)
    padded, spec = pad_to_multiple(x, multiple, mode=mode, value=-1.0)
    m = (multiple,) * 3 if isinstance(multiple, int) else multiple
    assert all(s % k == 0 for s, k in zip(padded.shape[-3:], m))
    assert all(abs(a - b) <= 1 for a, b in spec)  # symmetric split
    assert torch.equal(crop_to(padded, spec), x)
    # The padded volume can then be puzzled and restored.
    assert torch.equal(crop_to(unpuzzle(puzzle(padded, m), m), spec), x)


def test_pad_values_and_3d_input():
    x = torch.ones(5, 6, 7)
    padded, spec = pad_to_multiple(x, 4, value=-2.0)
    assert padded.shape == (8, 8, 8)
    assert spec == ((1, 2), (1, 1), (0, 1))
    assert padded[0, 0, 0] == -2.0 and padded.sum() == 5 * 6 * 7 - 2.0 * (512 - 5 * 6 * 7)
    rep, _ = pad_to_multiple(torch.arange(3.0).reshape(1, 1, 3).expand(4, 4, 3), (1, 1, 4), mode="replicate")
    assert rep[0, 0].tolist() == [0.0, 1.0, 2.0, 2.0]
    same, spec0 = pad_to_multiple(x, 1)
    assert same is x and spec0 == ((0, 0),) * 3


def test_pad_errors():
    with pytest.raises(VoxdiffError, match="mode"):
        pad_to_multiple(torch.zeros(4, 4, 4), 2, mode="wrap")
    with pytest.raises(VoxdiffError, match="reflect"):
        pad_to_multiple(torch.zeros(1, 1, 2, 2, 2), 8, mode="reflect")
    with pytest.raises(VoxdiffError, match="floating"):
        pad_to_multiple(torch.zeros(3, 3, 3, dtype=torch.int64), 4, mode="replicate")
    labels, spec = pad_to_multiple(torch.ones(3, 3, 3, dtype=torch.bool), 4)
    assert labels.dtype == torch.bool and labels.sum() == 27 and torch.equal(crop_to(labels, spec), torch.ones(3, 3, 3, dtype=torch.bool))
