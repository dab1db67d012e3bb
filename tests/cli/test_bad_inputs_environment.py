"""Bad-input corpus across commands: a full disk and other environment errors.

ENOSPC injected into the writes of one output folder (in-process), the CLI's one-line report of an
OSError escaping a command, and a real EFBIG from RLIMIT_FSIZE (subprocess). No case runs a model to
completion except where a full disk must hit the final write.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli.bad_input_helpers import AFFINE, listing, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main
from voxdiff.errors import VoxdiffError
from voxdiff.io import save_volume


# ----------------------------------------------------------------------------- a full disk (ENOSPC), in-process
class _FullDiskFile:
    """A file on a disk with ``room`` bytes left: the write that does not fit fails with ENOSPC."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])  # what fitted stays in the (temporary) file
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder, only="")``: files opened for writing under ``folder`` (names containing ``only``;
    staged outputs are written in hidden temporary folders inside it)
    fail with ENOSPC after 100 bytes. Patches ``open`` (gzip/nibabel .nii.gz, Path.write_*, csv, torch
    checkpoints via Path.write_bytes); C++ writers (SimpleITK) are covered by the subprocess tests."""

    def install(folder: Path, only: str = "") -> None:
        real_open = builtins.open
        target = os.path.realpath(folder)

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if (isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+")
                    and os.path.realpath(file).startswith(target + os.sep) and only in os.path.basename(file)):
                return _FullDiskFile(f, 100)
            return f

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)

    return install


@pytest.mark.parametrize("suffix", [".nii.gz", ".hv"])
def test_save_volume_disk_full(suffix, full_disk, tmp_path):
    full_disk(tmp_path)
    path = tmp_path / f"vol{suffix}"
    with pytest.raises(VoxdiffError, match=r"no space left on device; nothing was written") as exc:
        save_volume(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), path, affine=AFFINE)
    assert str(exc.value).startswith(str(path))
    assert listing(tmp_path) == []


DISK_FULL_CASES = ["translate", "translate_uncertainty", "segment", "segment_probs", "export", "evaluate",
                   "make-labels", "simulate-pet", "simulate-pet-dataset"]


@pytest.mark.parametrize("case", DISK_FULL_CASES)
def test_disk_full(case, full_disk, corpus, translation_model, seg_models, presegs, parcellations, label_dirs,
                   capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    good = corpus["good"]
    translate = ["translate", "-m", translation_model, "-i", good, "-o", out / "pred.nii.gz", "-k", "1"]
    segment = ["segment", "-m", seg_models["seg"], "-i", good, "-o", out / "seg.nii.gz", "--preseg", presegs["ok"],
               "-k", "1"]
    pet = ["--scheme", "brainweb", "--head", "none"]
    # (command, folder of the full disk, file names that fail, the file the message names)
    args, folder, only, named = {
        "translate": (translate, out, "", "pred.nii.gz"),
        "translate_uncertainty": (translate + ["-n", "2", "-u", out / "unc.nii.gz"], out, "unc", "unc.nii.gz"),
        "segment": (segment, out, "", "seg.nii.gz"),
        "segment_probs": (segment + ["-u", out / "unc.nii.gz", "--probs", out / "probs.nii.gz"], out, "probs",
                          "probs.nii.gz"),
        "export": (["export", translation_model, out / "model.pt"], out, "", "model.pt"),
        "evaluate": (["evaluate", "--pred", good, "--target", good, "--out", out / "m.csv"], out, "", "m.csv"),
        "make-labels": (["make-labels", "--labels-dir", parcellations / "good", "--images-dir", parcellations / "t1",
                         "--preset", "tissue", "--out-dir", out], out / "labels", "b.nii", "b.nii.gz"),
        "simulate-pet": (["simulate-pet", label_dirs / "good" / "a.nii.gz", "--out-dir", out, *pet], out, "pet.json",
                         "a_pet.json"),
        "simulate-pet-dataset": (["simulate-pet-dataset", "--labels-dir", label_dirs / "good", "--out-dir", out, *pet],
                                 out, "manifest", "manifest.csv"),
    }[case]
    full_disk(folder, only)
    line = assert_user_error(*run_main(args, capsys), named)
    assert "no space left on device" in line, line
    left = listing(out)
    if case in ("simulate-pet-dataset", "make-labels"):
        # Dataset builders: completed subjects are kept (verified and skipped by a re-run of simulate-pet-dataset);
        # no manifest, no temporary file.
        assert not [n for n in left if "manifest" in n or Path(n).name.startswith(".") or "tmp" in n], left
    else:
        # Nothing: neither the file that failed, nor its temporary file, nor the outputs written before it.
        assert left == []


def test_environment_oserror_escaping_a_command_is_one_line(monkeypatch, corpus, capsys):
    # The CLI's safety net: a full disk outside the atomic writers (a log, a plot) is not a traceback.
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/train_log.csv")

    monkeypatch.setattr("voxdiff.cli.info.load_volume", disk_full)
    line = assert_user_error(*run_main(["info", corpus["good"]], capsys), "/runs/x/train_log.csv")
    assert "no space left on device" in line

    def bug(*args, **kwargs):  # other OSErrors are not the user's: they keep their traceback
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr("voxdiff.cli.info.load_volume", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):
        run_main(["info", corpus["good"]], capsys)


# ----------------------------------------------------------------------------- a real kernel error: RLIMIT_FSIZE
FILE_SIZE_LIMIT = 4096  # bytes: every output below is larger


def _limit_file_size() -> None:
    # In the child: a write past the limit fails with EFBIG instead of killing the process (SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


#: Run in the limited child: save_volume in every format, then CLI commands (one interpreter: one torch import).
_LIMITED_SCRIPT = """
import contextlib, io, json, sys
import numpy as np
from voxdiff.cli import main
from voxdiff.errors import VoxdiffError
from voxdiff.io import save_volume

results = []
a = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
for path in json.loads(sys.argv[1]):
    try:
        save_volume(a, path, affine=np.eye(4))
        results.append({"path": path, "error": None})
    except VoxdiffError as exc:
        results.append({"path": path, "error": str(exc)})
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append({"argv": argv, "code": code, "stderr": err.getvalue()})
print(json.dumps(results))
"""


def test_file_size_limit_real_kernel_error(corpus, translation_model, seg_models, presegs, tmp_path):
    # Every writer meets a real EFBIG: nibabel (.nii, .nii.gz), SimpleITK (.mha, .nrrd and the detached
    # .mhd/.nhdr headers, whose small header fits but whose data file does not), Interfile (.hv + .v),
    # torch checkpoints (export), and whole commands (translate, segment) whose model runs before the write.
    suffixes = [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".hv"]
    volumes = [str(tmp_path / f"vol{s}") for s in suffixes]
    commands = {
        "pred.nii.gz": ["translate", "-m", translation_model, "-i", corpus["good"], "-o", tmp_path / "pred.nii.gz",
                        "-k", "1"],
        # uint8 labels compress to almost nothing: uncompressed, 16^3 voxels exceed the limit.
        "seg.nii": ["segment", "-m", seg_models["preseg"], "-i", corpus["good"], "-o", tmp_path / "seg.nii"],
        "model.pt": ["export", translation_model, tmp_path / "model.pt"],
    }
    argvs = [[str(a) for a in argv] for argv in commands.values()]
    env = {**os.environ, "COLUMNS": "300", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _LIMITED_SCRIPT, json.dumps(volumes), json.dumps(argvs)],
                          capture_output=True, text=True, env=env, timeout=300, preexec_fn=_limit_file_size)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for path, res in zip(volumes, results[: len(volumes)]):
        assert res["error"] is not None, f"{path} was written past the file size limit"
        assert res["error"].startswith(f"{path}: ") and res["error"].endswith("nothing was written"), res
        if not path.endswith((".nrrd", ".nhdr")):  # ITK's NRRD writer names no system reason
            assert "file too large" in res["error"], res
    for name, res in zip(commands, results[len(volumes):]):
        line = assert_user_error(res["code"], "", res["stderr"], name)
        assert "file too large" in line, line
    assert listing(tmp_path) == []
