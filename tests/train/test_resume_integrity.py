"""Resume integrity: refused config changes, logs without repeated steps, torn files, signals, pruning.

Every refusal is exit 2 with one line and leaves the run folder byte-identical.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_user_error, digest, make_pairs, run_main
from voxdiff.train.checkpoint import (InterruptGuard, TrainingInterrupted, load_checkpoint, save_checkpoint,
                                      truncate_log)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    manifest = make_pairs(d, n=3, size=8)
    (d / "tiny.yaml").write_text(
        "task: translation\n"
        f"data: {{manifest: {manifest}, crop_size: 8, val_fraction: 0.34, val_cases: 1,\n"
        "       normalization: {source: {mode: range, lo: -50, hi: 200}, target: {mode: same_as, role: source}}}\n"
        "model: {backbone: {kind: unet, base_channels: 4, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 2},\n"
        "        puzzle_factor: 2}\n"
        "train: {steps: 2, batch_size: 1, val_every: 2, ckpt_every: 1, log_every: 1, keep_checkpoints: 0}\n"
        "inference: {steps: 2}\n")
    return d / "tiny.yaml"


def train(config: Path, run: Path, capsys, *args) -> tuple[int, str, str]:
    return run_main(["train", config, "-o", run, *args], capsys)


def steps_logged(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.fixture
def run(data, tmp_path, capsys) -> Path:
    """A finished 2-step run (step_1, step_2, last.pt, logs)."""
    code, out, err = train(data, tmp_path / "run", capsys)
    assert code == 0, err
    return tmp_path / "run"


def test_existing_run_needs_resume_or_overwrite(data, run, capsys):
    before = digest(run)
    line = assert_user_error(*train(data, run, capsys), str(run), "--resume", "--overwrite")
    assert "earlier training run" in line
    assert digest(run) == before
    (run / "notes.txt").write_text("mine\n")
    code, out, err = train(data, run, capsys, "--overwrite")
    assert code == 0, err
    aside = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and "moved the earlier run" in out
    assert {k.split("/", 1)[1]: v for k, v in digest(aside[0].parent).items()
            if k.startswith(aside[0].name + "/")} == before       # the old files, byte-identical
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "last.pt").exists()
    assert_user_error(*train(data, run, capsys, "--overwrite", "--resume"), "--resume", "--overwrite")


@pytest.mark.parametrize("change, key", [
    (["--set", "seed=1"], "seed"),
    (["--set", "data.crop_size=[8, 8, 4]"], "data.crop_size"),
    (["--set", "train.lr=1e-3"], "train.lr"),
    (["--set", "train.batch_size=2"], "train.batch_size"),
    (["--set", "data.normalization.source.hi=300"], "data.normalization.source.hi"),
    (["--set", "model.process.noise_scale=0.5"], "model.process"),
    (["--steps", "1"], "train.steps"),
])
def test_resume_refuses_a_changed_run(change, key, data, run, capsys):
    before = digest(run)
    line = assert_user_error(*train(data, run, capsys, "--resume", "--steps", "4", *change), key)
    assert "checkpoint" in line
    assert digest(run) == before


def test_resume_with_more_steps_logs_each_step_once(data, run, capsys):
    code, out, err = train(data, run, capsys, "--resume", "--steps", "4", "--set", "train.log_every=1",
                           "--set", "inference.steps=1")
    assert code == 0, err
    assert "resumed from" in out
    assert steps_logged(run / "train_log.csv") == [1, 2, 3, 4]
    assert steps_logged(run / "val_log.csv") == [2, 4]
    assert load_checkpoint(run / "last.pt")["step"] == 4


def test_logs_are_cut_back_and_torn_lines_dropped(data, run, capsys):
    # A run that went on to step 3 before being killed mid-line, while last.pt stayed at step 2.
    log = run / "train_log.csv"
    header = log.read_text().splitlines()[0]
    n = len(header.split(","))
    with open(log, "a") as f:
        f.write(",".join(["3"] + ["0.5"] * (n - 1)) + "\n" + "4,0.00")
    code, out, err = train(data, run, capsys, "--resume", "--steps", "3")
    assert code == 0, err
    text = log.read_text()
    assert text.count("step,") == 1 and text.endswith("\n")
    assert steps_logged(log) == [1, 2, 3]


def test_truncate_log_edge_cases(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("step,loss\n1,0.5\n2,0.4\n3,0.")
    assert truncate_log(p, 2) == 1 and p.read_text() == "step,loss\n1,0.5\n2,0.4\n"
    assert truncate_log(p, 2) == 0
    p.write_text("ste")
    truncate_log(p, 5)
    assert not p.exists()


def test_killed_during_first_last_pt_write_resumes_from_step_file(data, run, capsys):
    raw = (run / "last.pt").read_bytes()
    (run / "step_0000002.pt").unlink()
    (run / "last.pt").write_bytes(raw[: len(raw) // 3])   # torn: the kill hit the first last.pt write
    code, out, err = train(data, run, capsys, "--resume", "--steps", "3")
    assert code == 0, err
    assert "skipping last.pt" in out and "resumed from" in out and "step_0000001.pt at step 1" in out
    assert load_checkpoint(run / "last.pt")["step"] == 3
    assert steps_logged(run / "train_log.csv") == [1, 2, 3]


def test_no_complete_checkpoint_is_one_line(data, run, capsys):
    for p in [run / "last.pt", *run.glob("step_*.pt")]:
        p.write_bytes(p.read_bytes()[:100])
    before = digest(run)
    assert_user_error(*train(data, run, capsys, "--resume", "--steps", "3"), "no complete checkpoint")
    assert digest(run) == before


def test_stale_temp_files_are_removed(data, run, capsys):
    stale = [run / ".last.pt.k2j4h5g6.tmp.pt", run / ".step_0000003.pt.abcd_123.tmp.pt",
             run / ".train_log.csv.q1w2e3r4.tmp.csv"]
    for p in stale:
        p.write_bytes(b"partial")
    foreign = run / ".editor.swp.tmp"
    foreign.write_text("someone else's")
    code, out, err = train(data, run, capsys, "--resume", "--steps", "3")
    assert code == 0, err
    assert not any(p.exists() for p in stale) and foreign.read_text() == "someone else's"
    assert "temporary file left by an interrupted run" in out


def test_pruning_keeps_foreign_step_files(data, run, capsys):
    foreign = run / "step_0000000.pt"
    foreign.write_bytes(b"another run's checkpoint")
    code, out, err = train(data, run, capsys, "--resume", "--steps", "5", "--set", "train.keep_checkpoints=2")
    assert code == 0, err
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_0000000.pt", "step_0000004.pt", "step_0000005.pt"]
    assert foreign.read_bytes() == b"another run's checkpoint"
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["run_id"] == load_checkpoint(run / "step_0000004.pt")["run_id"]


def test_checkpoint_writes_fsync_file_and_folder(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    save_checkpoint(tmp_path / "x.pt", {"task": "translation"})
    assert len(calls) >= 2 and load_checkpoint(tmp_path / "x.pt")["task"] == "translation"


def test_interrupt_guard_defers_a_signal_during_a_write():
    done = []
    with InterruptGuard() as guard:
        with pytest.raises(TrainingInterrupted) as info:
            with guard.writing():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("write finished")
        assert done == ["write finished"] and info.value.signame == "SIGTERM"
        with pytest.raises(TrainingInterrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once; never reached
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.slow  # a fresh interpreter importing torch: ~10 s on a loaded 2-core machine
def test_sigterm_stops_cleanly_and_resumes(data, tmp_path, capsys):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "voxdiff", "train", str(data), "-o", str(run), "--steps", "100000",
                             "--set", "train.val_every=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 180
        while not (run / "step_0000002.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "training did not write its second checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGTERM at step"), err
    assert "--resume" in lines[0] and "Traceback" not in out + err
    assert not list(run.glob(".*tmp*")), "the interrupted write was finished or rolled back"
    saved = load_checkpoint(run / "last.pt")["step"]
    assert f"last checkpoint (step {saved})" in lines[0]
    code, out, err = train(data, run, capsys, "--resume", "--steps", str(saved + 1), "--set", "train.val_every=0")
    assert code == 0, err
    logged = steps_logged(run / "train_log.csv")
    assert logged == list(range(1, saved + 2))
    assert torch.load(run / "last.pt", weights_only=True)["step"] == saved + 1
