"""Real multi-process training (torchrun, gloo) and resume after SIGKILL, through the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers import free_port, make_pairs, subprocess_env

CONFIG = """
task: translation
seed: 7
data:
  manifest: {manifest}
  crop_size: 8
  val_fraction: 0.0
  normalization:
    source: {{mode: range, lo: -50, hi: 200}}
    target: {{mode: same_as, role: source}}
model:
  backbone: {{kind: unet, base_channels: 16, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 4}}
  puzzle_factor: 2
train:
  steps: {steps}
  batch_size: {batch}
  lr: {lr}
  optimizer: {optimizer}
  val_every: 0
  ckpt_every: {ckpt_every}
  log_every: 1
  keep_checkpoints: 0
"""


def _write_config(tmp_path: Path, name: str, lr: float = 1e-3, optimizer: str = "adamw", **kw) -> Path:
    manifest = tmp_path / "manifest.csv"
    if not manifest.exists():
        make_pairs(tmp_path, n=4)
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(manifest=manifest, lr=lr, optimizer=optimizer, **kw))
    return path


def _weights(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def test_two_process_ddp_equals_one_process_with_same_global_batch(tmp_path):
    # SGD: Adam divides by sqrt(v), which turns float rounding in near-zero gradients (summation
    # order differs between one batch of 2 and an all-reduce of two batches of 1) into full-size
    # updates; with SGD the comparison measures the training itself.
    opt = dict(steps=3, ckpt_every=3, lr=0.05, optimizer="sgd")
    one = _write_config(tmp_path, "one", batch=2, **opt)
    two = _write_config(tmp_path, "two", batch=1, **opt)
    for cfg, out in ((one, "r1"), (two, "r_single_shard")):
        subprocess.run([sys.executable, "-m", "voxdiff", "train", str(cfg), "-o", str(tmp_path / out)],
                       check=True, env=subprocess_env(), capture_output=True, timeout=300)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                          "-m", "voxdiff", "train", str(two), "-o", str(tmp_path / "r2")],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    w1, w2 = _weights(tmp_path / "r1"), _weights(tmp_path / "r2")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-6, rtol=0), k
    # The comparison can fail: one process on a batch of 1 (half the data) ends elsewhere.
    w0 = _weights(tmp_path / "r_single_shard")
    assert max(float((w0[k] - w1[k]).abs().max()) for k in w1) > 1e-4
    ck = torch.load(tmp_path / "r2" / "last.pt", weights_only=True)
    assert ck["step"] == 3


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    cfg = _write_config(tmp_path, "kill", steps=8, batch=2, ckpt_every=1)
    base = [sys.executable, "-m", "voxdiff", "train", str(cfg)]
    subprocess.run(base + ["-o", str(tmp_path / "full")], check=True, env=subprocess_env(), capture_output=True,
                   timeout=300)

    run = tmp_path / "killed"
    proc = subprocess.Popen(base + ["-o", str(run)], env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "step_0000003.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "last.pt").exists(), "the run never reached a checkpoint before the kill"
    killed_at = torch.load(run / "last.pt", weights_only=True)["step"]
    assert killed_at < 8, "the kill came too late to test resuming"
    subprocess.run(base + ["-o", str(run), "--resume"], check=True, env=subprocess_env(), capture_output=True,
                   timeout=300)
    a, b = _weights(tmp_path / "full"), _weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 8
