"""The one trainer every task uses: AdamW, EMA, AMP, accumulation, DDP, exact resume.

Data order is a pure function of the seed and the step: the global sample stream is a
concatenation of seeded per-epoch permutations, and sample ``q`` of that stream gets its
own noise generator seeded from ``(seed, q)``. So resuming at step ``s`` needs only ``s``,
and N processes sharing a global batch see exactly the samples and noise one process would.
"""

from __future__ import annotations

import contextlib

import csv
import math
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.io import atomic_write_text
from voxdiff.tasks import Task, build_task
from voxdiff.train import distributed as D
from voxdiff.config import RESUME_MUTABLE, check_device, config_difference
from voxdiff.train.checkpoint import (InterruptGuard, earlier_run, find_resume_checkpoint, load_checkpoint,
                                      move_run_aside, remove_stale_temp, save_checkpoint, truncate_log)
from voxdiff.train.config import dump_config, with_defaults
from voxdiff.train.ema import EMA
from voxdiff.train.init import init_from, read_start_model
from voxdiff.train.tensorboard import TensorBoardLog

_SEED_STRIDE = 1_000_003


def sample_generators(seed: int, positions: list[int]) -> list[torch.Generator]:
    """One CPU generator per global sample position, independent of rank and world size."""
    return [torch.Generator().manual_seed(int(seed) * _SEED_STRIDE + int(q)) for q in positions]


def stream_items(seed: int, n_items: int, start: int, count: int) -> list[tuple[int, int]]:
    """``(epoch, index)`` of global stream positions ``start .. start+count-1``."""
    out, cache = [], {}
    for q in range(start, start + count):
        epoch, within = divmod(q, n_items)
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([int(seed), int(epoch)]).permutation(n_items)
        out.append((epoch, int(cache[epoch][within])))
    return out


def rng_state() -> dict:
    """Python, numpy and torch (CPU + CUDA) RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU has native bf16 (AVX512-BF16 / AMX): without it bf16 autocast is emulated, slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


def role_columns(roles_cfg: dict, task_roles) -> dict[str, list[str]]:
    """``data.roles`` as role -> manifest columns: one column (default: the role's own name) or a list.

    A list gives a role alternative sources (e.g. one low-dose column per dose): every training
    subject then appears once per alternative, and the first column is the one validation uses.
    """
    out = {}
    for role in task_roles:
        spec = roles_cfg.get(role, role)
        cols = [spec] if isinstance(spec, str) else list(spec)
        if len(set(cols)) != len(cols):
            raise VoxdiffError(f"config data.roles.{role} lists a column twice: {cols}")
        out[role] = cols
    return out


def condition_meta(subject, columns: list[str], spec: dict) -> dict[str, str]:
    """The scalar conditions (``data.conditions``) of one subject read through ``columns`` (one per role).

    A condition is either a manifest column of numbers (its name as a string) or a mapping
    column -> value over the alternative columns of a role (e.g. ``{low_5: 5, low_1: 1}``).
    """
    out = {}
    for name, source in spec.items():
        if isinstance(source, str):
            if source not in subject.meta:
                raise VoxdiffError(f"config data.conditions.{name} names the manifest column '{source}', "
                                   f"which case '{subject.id}' lacks")
            out[name] = subject.meta[source]
            continue
        hits = [c for c in columns if c in source]
        if len(hits) != 1:
            raise VoxdiffError(f"config data.conditions.{name} must give a value for exactly one of the columns "
                               f"{', '.join(columns)} that case '{subject.id}' is read through (it gives values for "
                               f"{', '.join(map(str, source)) or 'none'})")
        out[name] = repr(float(source[hits[0]]))
    return out


def column_combinations(alternatives: dict[str, list[str]], mode: str = "product") -> list[tuple[str, ...]]:
    """The column tuples (one per role, in ``alternatives`` order) a subject is read through.

    ``product``: every combination. ``zip`` (``data.alternatives: zip``): position by position, for
    roles whose alternatives pair up (``source: [low_5, low_1]`` with ``target: [comp_5, comp_1]``);
    a role with one column pairs with every position.
    """
    import itertools

    lists = list(alternatives.values())
    if mode == "product":
        return list(itertools.product(*lists))
    lengths = {len(cols) for cols in lists if len(cols) > 1}
    if len(lengths) > 1:
        listed = ", ".join(f"{r} {len(c)}" for r, c in alternatives.items() if len(c) > 1)
        raise VoxdiffError(f"config data.alternatives: zip needs the same number of columns in every role that "
                           f"lists several (data.roles: {listed})")
    n = lengths.pop() if lengths else 1
    return [tuple(cols[i] if len(cols) > 1 else cols[0] for cols in lists) for i in range(n)]


def expand_alternatives(subjects: list, alternatives: dict[str, list[str]], conditions: dict | None = None,
                        combos: list[tuple[str, ...]] | None = None) -> list:
    """One training case per subject and combination of alternative columns (``id:column`` ids).

    ``conditions`` (``data.conditions``) fills each case's ``meta`` with its condition values;
    ``combos`` are :func:`column_combinations`' tuples (default: every combination).
    """
    from voxdiff.data import Case

    roles = list(alternatives)
    combos = column_combinations(alternatives) if combos is None else combos
    out = []
    for subj in subjects:
        for combo in combos:
            varied = [col for r, col in zip(roles, combo) if len(alternatives[r]) > 1]
            cid = subj.id if not varied else f"{subj.id}:{'+'.join(varied)}"
            meta = condition_meta(subj, list(combo), conditions) if conditions else {}
            out.append(Case(cid, {r: subj.paths[col] for r, col in zip(roles, combo)}, meta))
    return out


def _stack(items: list[dict], roles: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    out = {r: torch.stack([it[r] for it in items]).to(device=device, dtype=torch.float32) for r in roles}
    for key in ("location", "shape", "conditions"):  # crop position (coordinate channels), scalar conditions
        if key in items[0]:
            out[key] = torch.stack([it[key] for it in items]).to(device)
    return out


class Trainer:
    """Train a task from a merged config (see :mod:`voxdiff.train.config`).

    ``resume`` may be ``True`` (the newest complete checkpoint of ``out_dir``, if any) or a
    checkpoint path. Without it, an ``out_dir`` holding an earlier run is refused, unless
    ``overwrite`` moves that run's files aside (into ``out_dir/previous-<time>/``).

    Resume integrity: the checkpoint's config must equal this one except for the keys in
    :data:`voxdiff.config.RESUME_MUTABLE` (length, logging / validation / checkpoint
    frequencies, out_dir, device, workers, inference); the logs are cut back to the
    checkpoint's step; a truncated or corrupt ``last.pt`` falls back to the newest complete
    ``step_*.pt``. Checkpoints are pruned only among those this run's lineage wrote (recorded
    in each checkpoint with its ``run_id``). SIGINT and SIGTERM stop training between writes.
    """

    def __init__(self, cfg: dict, *, resume: bool | str | Path = False, quiet: bool = False,
                 overwrite: bool = False) -> None:
        self.cfg = cfg
        tr = cfg["train"]
        check_device(tr.get("device", "auto"), "train.device")
        self.info = D.init_distributed(tr.get("device", "auto"))
        self.quiet = quiet or not self.info.is_main
        self.out_dir = Path(tr["out_dir"])
        self.run_id = uuid.uuid4().hex
        self.own_checkpoints: list[str] = []   # step_*.pt names this run (and the runs it resumes) wrote
        self.saved_step: int | None = None
        self.guard = InterruptGuard()
        # A fresh run reads its start model before touching out_dir: a bad one fails with nothing
        # moved, and one inside out_dir is read before --overwrite moves it aside.
        start = (read_start_model(str(tr["init_from"]), task_name=cfg["task"])
                 if tr.get("init_from") and not resume else None)
        if self.info.is_main:
            self._prepare_out_dir(resume, overwrite)
        self.seed = int(cfg["seed"])
        # Per-rank seed for anything not drawn from the per-sample generators (dropout, ...).
        torch.manual_seed(self.seed + self.info.rank)
        random.seed(self.seed + self.info.rank)
        np.random.seed((self.seed + self.info.rank) % 2**32)

        self.task: Task = build_task(cfg["task"], cfg["model"]).to(self.info.device)
        self._setup_data()
        self.model = self.task
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.model = DDP(self.task, device_ids=ids)
        if tr["optimizer"] == "sgd":
            self.optimizer = torch.optim.SGD(self.task.parameters(), lr=float(tr["lr"]), momentum=0.9,
                                             weight_decay=float(tr["weight_decay"]))
        else:
            self.optimizer = torch.optim.AdamW(self.task.parameters(), lr=float(tr["lr"]),
                                               weight_decay=float(tr["weight_decay"]),
                                               betas=tuple(float(b) for b in tr["betas"]))
        self.scaler = torch.amp.GradScaler(self.info.device.type, enabled=tr["precision"] == "fp16")
        self.ema = EMA(self.task, float(tr["ema_decay"]))
        self.step = 0
        self.history: list[dict] = []
        self.init_info: dict | None = None
        if resume:
            self._resume(resume)
        if tr.get("init_from") and self.step == 0:
            # Only a fresh run loads the start model (a resumed one has its own weights). Every rank
            # loads the same file, so DDP's replicas stay equal; the EMA restarts at the start model.
            i = self.init_info = init_from(self.task, str(tr["init_from"]), task_name=self.task.name, split=self.split,
                                                start=start)
            self.ema = EMA(self.task, float(tr["ema_decay"]))
            if not self.quiet:
                print(f"initialised from {i['spec']} (step {i['step']})"
                      + (f"; new input channels start at zero in {', '.join(i['grown'])}" if i["grown"] else ""))
                seen = i["held_out_seen"]
                if seen:
                    print(f"warning: train.init_from {i['spec']} was trained on {len(seen)} of this run's "
                          f"validation/test cases ({', '.join(seen[:3])}{', ...' if len(seen) > 3 else ''}): "
                          "their scores are not held-out")

    def _prepare_out_dir(self, resume: bool | str | Path, overwrite: bool) -> None:
        """Remove stale temporary files; refuse (or, with ``overwrite``, move aside) an earlier run."""
        if resume and overwrite:
            raise VoxdiffError("--resume and --overwrite exclude each other: continue the run or replace it")
        for p in remove_stale_temp(self.out_dir):
            if not self.quiet:
                print(f"removed {p.name}, a temporary file left by an interrupted run")
        found = earlier_run(self.out_dir)
        if found and not resume:
            if not overwrite:
                raise VoxdiffError(f"{self.out_dir}: holds an earlier training run ({', '.join(found)}); continue it "
                                   "with --resume, move it aside with --overwrite, or choose another --out-dir")
            dest = move_run_aside(self.out_dir)
            if not self.quiet:
                print(f"moved the earlier run's files into {dest}")

    # ------------------------------------------------------------------ data
    def _setup_data(self) -> None:
        from voxdiff.data import (Case, VolumeDataset, fit_dataset_normalizers, load_manifest, resolve_normalization,
                                  scan_folder, split_cases)

        dc = self.cfg["data"]
        task = self.task
        alternatives = role_columns(dc.get("roles", {}), task.roles)
        # refuses unpaired zip lists before any file is read
        combos = column_combinations(alternatives, str(dc.get("alternatives", "product")))
        wanted = list(dict.fromkeys(col for cols in alternatives.values() for col in cols))
        if dc.get("manifest"):
            cases = load_manifest(dc["manifest"], roles=wanted)
        elif dc.get("folder"):
            cases = scan_folder(dc["folder"], wanted)
        else:
            raise VoxdiffError("config data.manifest (or data.folder) is required for training")
        # Subjects are split once, on each role's first column; alternatives never cross the split.
        conditions = dict(dc.get("conditions") or {})
        names = set(task.conditions.names)
        if set(conditions) != names:
            extra, missing = sorted(set(conditions) - names), sorted(names - set(conditions))
            raise VoxdiffError(f"config data.conditions.{extra[0]} is not a condition of the model (model.conditions: "
                               f"{', '.join(sorted(names)) or 'none'})" if extra else
                               f"config model.conditions names {missing[0]}, but data.conditions gives no value for it")
        subjects = {c.id: c for c in cases}
        firsts = [cols[0] for cols in alternatives.values()]
        cases = [Case(c.id, {r: c.paths[cols[0]] for r, cols in alternatives.items()},
                      condition_meta(c, firsts, conditions) if conditions else {}) for c in cases]
        split = split_cases(cases, val_fraction=float(dc["val_fraction"]),
                            test_fraction=float(dc["test_fraction"]), seed=int(dc["split_seed"]))
        self.split = {k: [c.id for c in v] for k, v in split.items()}
        if not split["train"]:
            raise VoxdiffError("the split left no training case (lower data.val_fraction / test_fraction)")
        train_cases = expand_alternatives([subjects[c.id] for c in split["train"]], alternatives, conditions, combos)
        norm = resolve_normalization(dc.get("normalization", {}), list(task.roles), task.label_roles)
        self.dataset_norm = fit_dataset_normalizers(train_cases, norm, label_roles=task.label_roles)
        common = dict(roles=list(task.roles), normalization=norm, label_roles=tuple(task.label_roles),
                      seed=self.seed, dataset_normalizers=self.dataset_norm, downsample=int(dc["downsample"]),
                      conditions=task.conditions.names)
        self.train_set = VolumeDataset(train_cases, crop_size=dc["crop_size"],
                                       pad_multiple=task.required_multiple,
                                       samples_per_volume=int(dc["samples_per_volume"]),
                                       foreground_role=dc.get("foreground_role"),
                                       foreground_fraction=float(dc.get("foreground_fraction", 0.0)), **common)
        val_cases = split["val"][: int(dc["val_cases"])]
        self.val_set = (VolumeDataset(val_cases, crop_size=None, pad_multiple=task.required_multiple, **common)
                        if val_cases else None)
        self.normalization = norm
        # Geometry of the first training case: where unconditional samples are written.
        from voxdiff.io import load_volume

        from voxdiff.ops.resample import downsample_geometry

        ref = load_volume(split["train"][0].paths[task.output_role], role=task.output_role)
        shape, affine = downsample_geometry(ref.shape, ref.affine, int(dc["downsample"]))
        self.reference_geometry = {"shape": list(shape), "affine": affine.tolist(), "case": split["train"][0].id}

    def _batch(self, micro: int) -> tuple[dict[str, torch.Tensor], list[torch.Generator]]:
        tr = self.cfg["train"]
        b, w = int(tr["batch_size"]), self.info.world_size
        per_step = b * w * int(tr["grad_accum"])
        start = self.step * per_step + micro * b * w + self.info.rank * b
        positions = list(range(start, start + b))
        items = []
        for epoch, index in stream_items(self.seed, len(self.train_set), start, b):
            self.train_set.set_epoch(epoch)
            items.append(self.train_set[index])
        return _stack(items, self.task.roles, self.info.device), sample_generators(self.seed, positions)

    # ------------------------------------------------------------ checkpoint
    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly or to run inference."""
        return {
            "task": self.task.name,
            "config": self.cfg,
            "model": self.task.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": rng_state(),
            "normalization": self.normalization,
            "dataset_normalizers": self.dataset_norm,
            "split": self.split,
            "required_multiple": self.task.required_multiple,
            "reference_geometry": self.reference_geometry,
            "run_id": self.run_id,
            "checkpoints": list(self.own_checkpoints),
            "init": self.init_info,
        }

    def save(self) -> Path | None:
        """Write ``step_XXXXXXX.pt`` and ``last.pt`` atomically (rank 0 only), prune old ones."""
        if not self.info.is_main:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:07d}.pt"
        with self.guard.writing():  # a signal waits until both files are complete
            if name not in self.own_checkpoints:
                self.own_checkpoints.append(name)
            state = self.state()
            path = save_checkpoint(self.out_dir / name, state)
            save_checkpoint(self.out_dir / "last.pt", state)
            self.saved_step = self.step
            # Only this lineage's step files are pruned: another run's files in the folder stay.
            keep = int(self.cfg["train"]["keep_checkpoints"])
            own = sorted(n for n in self.own_checkpoints if (self.out_dir / n).exists())
            for n in own[:-keep] if keep > 0 else []:
                (self.out_dir / n).unlink(missing_ok=True)
            self.own_checkpoints = [n for n in self.own_checkpoints if (self.out_dir / n).exists()]
        return path

    def _resume(self, resume: bool | str | Path) -> None:
        say = (lambda text: None) if self.quiet else print
        if resume is True:
            ckpt = find_resume_checkpoint(self.out_dir, task=self.task.name, map_location=self.info.device, warn=say)
            if ckpt is None:  # nothing to resume: a fresh run, whose logs start over
                if self.info.is_main:
                    for name in ("train_log.csv", "val_log.csv"):
                        truncate_log(self.out_dir / name, 0)
                return
        else:
            ckpt = load_checkpoint(resume, task=self.task.name, map_location=self.info.device)
        path = Path(ckpt["path"])
        self._check_resumable(ckpt, path)
        missing = [k for k in ("model", "ema", "optimizer", "scaler", "step", "rng") if k not in ckpt]
        if missing:
            raise VoxdiffError(f"{path}: an inference-only checkpoint (no {', '.join(missing)}); "
                               "resuming needs a training checkpoint such as OUT_DIR/last.pt")
        try:
            self.task.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise VoxdiffError(f"{path}: checkpoint does not match this model architecture ({str(exc).splitlines()[0]})") from exc
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.init_info = ckpt.get("init")
        set_rng_state(ckpt["rng"])
        self.saved_step = self.step
        self.run_id = ckpt.get("run_id") or self.run_id
        self.own_checkpoints = list(ckpt.get("checkpoints") or [])
        if self.info.is_main:
            for name in ("train_log.csv", "val_log.csv"):
                if truncate_log(self.out_dir / name, self.step) and not self.quiet:
                    print(f"{name}: cut back to step {self.step}")
        if not self.quiet:
            print(f"resumed from {path} at step {self.step}")

    def _check_resumable(self, ckpt: dict, path: Path) -> None:
        """Refuse a resume whose config would change the run (see :data:`voxdiff.config.RESUME_MUTABLE`)."""
        if isinstance(ckpt.get("config"), dict):
            diff = config_difference(with_defaults(ckpt["config"]), self.cfg, RESUME_MUTABLE)
            if diff is not None:
                key, old, new = diff
                raise VoxdiffError(
                    f"{path}: cannot resume with a changed {key} (checkpoint {old!r}, now {new!r}); a resumed "
                    f"run may change only {', '.join(RESUME_MUTABLE)}, so start a new run in another --out-dir")
        step = int(ckpt.get("step", 0))
        if int(self.cfg["train"]["steps"]) < step:
            raise VoxdiffError(f"{path}: train.steps ({self.cfg['train']['steps']}) is below the checkpoint's step "
                               f"{step}; ask for more steps to continue")
        if ckpt.get("split") is not None and ckpt["split"] != self.split:
            raise VoxdiffError(f"{path}: the data gives another train/val/test split than the checkpoint's "
                               "(data.manifest or data.folder now lists other cases)")

    # ------------------------------------------------------------------ loop
    #: TensorBoard events in ``out_dir/tb`` (rank 0, opened by fit()); a no-op log otherwise.
    tb: TensorBoardLog = TensorBoardLog()

    def _lr(self) -> float:
        tr = self.cfg["train"]
        warm = int(tr["warmup_steps"])
        return float(tr["lr"]) * (min(1.0, (self.step + 1) / warm) if warm > 0 else 1.0)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns rank-averaged logs."""
        tr = self.cfg["train"]
        accum = int(tr["grad_accum"])
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr()
        logs_sum: dict[str, float] = {}
        total = 0.0
        for micro in range(accum):
            batch, gens = self._batch(micro)
            sync = micro == accum - 1 or not self.info.enabled
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                with _autocast(self.info.device, tr["precision"]):
                    loss, logs = self.model(batch, gens)
                if not torch.isfinite(loss):
                    raise VoxdiffError(f"loss became {float(loss)} at step {self.step}: lower train.lr or check the data")
                self.scaler.scale(loss / accum).backward()
            total += float(loss.detach()) / accum
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + v / accum
        self.scaler.unscale_(self.optimizer)
        if tr.get("grad_clip"):
            gnorm = torch.nn.utils.clip_grad_norm_(self.task.parameters(), float(tr["grad_clip"]))
            logs_sum["grad_norm"] = float(gnorm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.task)
        self.step += 1
        logs_sum["loss"] = total
        return D.reduce_mean(logs_sum, self.info)

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps`` (or ``train.max_minutes``), validating and checkpointing."""
        tr = self.cfg["train"]
        steps = int(tr["steps"])
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.yaml", dump_config(self.cfg))
            self.tb = TensorBoardLog.open(self.out_dir / "tb", start_step=self.step, quiet=self.quiet)
        if (tr["precision"] == "bf16" and self.info.device.type == "cpu" and self.info.is_main and not self.quiet
                and not cpu_bf16_is_fast()):
            # Measured on an AVX2-only CPU: a PPDM step 14.6x slower under bf16 autocast than in fp32.
            print("warning: train.precision bf16 on a CPU without native bf16 (AVX512-BF16/AMX) is much slower "
                  "than fp32; it only saves memory here")
        t0 = time.time()
        deadline = t0 + 60 * float(tr["max_minutes"]) if tr.get("max_minutes") else math.inf
        progress = _Progress(steps, self.step, disabled=self.quiet)
        last_val: dict[str, float] = {}
        with self.guard, progress:
            while self.step < steps:
                ts = time.time()
                logs = self.train_step()
                logs["sec_per_step"] = time.time() - ts
                progress.update(self.step, logs)
                if self.info.is_main and (self.step % int(tr["log_every"]) == 0 or self.step == steps):
                    self._log_row("train_log.csv", {"step": self.step, "lr": self._lr(), **logs})
                if int(tr["val_every"]) > 0 and (self.step % int(tr["val_every"]) == 0 or self.step == steps):
                    last_val = self.validate()
                if self.step % int(tr["ckpt_every"]) == 0 or self.step == steps:
                    self.save()
                if time.time() > deadline:
                    if self.step % int(tr["ckpt_every"]):
                        self.save()
                    break
        D.barrier(self.info)
        summary = {"steps": self.step, "wall_s": time.time() - t0, "val": last_val}
        if self.info.is_main:
            from voxdiff.plots import training_curves

            training_curves(self.out_dir / "train_log.csv", self.out_dir / "val_log.csv",
                            self.out_dir / "curves.png")
            self.tb.close()
        return summary

    def _log_row(self, name: str, row: dict) -> None:
        self.tb.log_row(name, row)
        path = self.out_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """EMA weights on whole validation volumes: task metrics + a montage PNG (rank 0)."""
        if self.val_set is None or not self.info.is_main:
            D.barrier(self.info)
            return {}
        from voxdiff.plots import montage

        inf = self.cfg["inference"]
        backup = {k: v.detach().clone() for k, v in self.task.state_dict().items()}
        self.task.load_state_dict(self.ema.shadow)
        self.task.eval()
        metrics: dict[str, list[float]] = {}
        try:
            for i in range(len(self.val_set)):
                item = self.val_set[i]
                batch = _stack([item], self.task.roles, self.info.device)
                inputs = {r: batch[r] for r in self.task.input_roles}
                g = torch.Generator().manual_seed(self.seed)
                extra = {"conditions": batch["conditions"]} if "conditions" in batch else {}
                pred = self.task.predict(inputs, steps=int(inf["steps"]), generator=g, eta=inf.get("eta"),
                                         shape=tuple(batch[self.task.output_role].shape), **extra)
                for k, v in self.task.validation_metrics(pred, batch).items():
                    metrics.setdefault(k, []).append(v)
                if i == 0:
                    panels = {r: batch[r][0, 0].cpu().numpy() for r in self.task.input_roles}
                    panels["output"] = next(iter(pred.values()))[0, 0].float().cpu().numpy()
                    panels[self.task.output_role] = batch[self.task.output_role][0, 0].cpu().numpy()
                    err = np.abs(panels["output"] - panels[self.task.output_role])
                    panels["|error|"] = err
                    # Inputs keep their own grey window; output and reference share the reference's.
                    ref = panels[self.task.output_role]
                    ranges = {r: tuple(np.percentile(panels[r], [1, 99.5])) for r in self.task.input_roles}
                    ranges.update({k: tuple(np.percentile(ref, [1, 99.5])) for k in ("output", self.task.output_role)})
                    ranges["|error|"] = (0.0, max(float(np.percentile(err, 99.5)), 1e-6))
                    montage(panels, self.out_dir / f"val_step{self.step:07d}.png",
                            title=f"{item['case']} step {self.step}", ranges=ranges, cmaps={"|error|": "magma"})
                    self.tb.image("val/montage", self.out_dir / f"val_step{self.step:07d}.png", self.step)
        finally:
            self.task.load_state_dict(backup)
        mean = {k: float(np.mean(v)) for k, v in metrics.items()}
        self._log_row("val_log.csv", {"step": self.step, **mean})
        self.history.append({"step": self.step, **mean})
        D.barrier(self.info)
        return mean


class _Progress:
    """A rich progress bar with loss and ETA; plain log lines when output is not a terminal."""

    def __init__(self, total: int, start: int, disabled: bool) -> None:
        from rich.console import Console

        self.disabled = disabled
        self.total, self.start, self.t0 = total, start, time.time()
        self.plain = not disabled and not Console().is_terminal
        self.every = max(1, total // 50)
        if disabled or self.plain:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), transient=False)
        self.task_id = self.bar.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        if not (self.disabled or self.plain):
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if not (self.disabled or self.plain):
            self.bar.__exit__(*exc)
        return False

    def update(self, step: int, logs: dict[str, float]) -> None:
        """Advance to ``step`` and show the loss."""
        if self.disabled:
            return
        info = f"loss {logs.get('loss', float('nan')):.4g}"
        if self.plain:
            if step % self.every == 0 or step == self.total:
                done = step - self.start
                eta = (time.time() - self.t0) / max(done, 1) * (self.total - step)
                print(f"step {step}/{self.total} {info} eta {eta / 60:.1f} min", flush=True)
            return
        self.bar.update(self.task_id, completed=step, info=info)


def environment_summary() -> dict[str, Any]:
    """Machine facts recorded beside benchmark and training outputs."""
    return {"torch": torch.__version__, "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
