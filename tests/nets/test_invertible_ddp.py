"""Two-process DDP (gloo) training of a memory-saving InvertibleUNet matches single-process training."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import free_port
from voxdiff.nets.invertible import InvertibleUNet

WORLD = 2
STEPS = 2
LR = 0.05


def _model() -> InvertibleUNet:
    torch.manual_seed(0)
    net = InvertibleUNet(1, 1, base_channels=4, levels=2, blocks_per_level=1, attention_levels=(1,),
                         coupling="affine", memory_saving=True, zero_init=False)
    with torch.no_grad():  # make the conv_out scale comparable to the rest so every grad matters
        net.conv_out.weight.mul_(10.0)
    return net


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * WORLD, 1, 8, 8, 8, generator=g)
    t = torch.randint(0, 1000, (2 * WORLD,), generator=g)
    target = torch.randn(2 * WORLD, 1, 8, 8, 8, generator=g)
    return x, t, target


def _train(net: torch.nn.Module, x, t, target) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x, t), target).backward()
        opt.step()


def _worker(rank: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        net = torch.nn.parallel.DistributedDataParallel(_model())
        x, t, target = _batch()
        shard = slice(2 * rank, 2 * rank + 2)  # equal shards: mean of local means = global mean
        _train(net, x[shard], t[shard], target[shard])
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in net.module.state_dict().items()}, out_path)
        # No rank tears gloo down while another still uses it (a SIGABRT in the other rank).
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_ddp_memory_saving_matches_single_process(tmp_path):
    out_path = str(tmp_path / "ddp_rank0.pt")
    mp.spawn(_worker, args=(free_port(), out_path), nprocs=WORLD, join=True)
    ddp_state = torch.load(out_path, weights_only=True)

    single = _model()
    start = {k: v.clone() for k, v in single.state_dict().items()}
    _train(single, *_batch())
    moved = 0
    for name, value in single.state_dict().items():
        assert torch.allclose(ddp_state[name], value, rtol=0, atol=1e-6), (
            name, (ddp_state[name] - value).abs().max().item())
        moved += int(not torch.equal(value, start[name]))
    assert moved > len(start) // 2  # training really changed the parameters
    # The comparison is sharp enough to tell one rank's shard from the global batch.
    local = _model()
    x, t, target = _batch()
    _train(local, x[:2], t[:2], target[:2])
    worst = max((ddp_state[k] - v).abs().max().item() for k, v in local.state_dict().items())
    assert worst > 1e-4
