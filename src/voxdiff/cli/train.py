"""``voxdiff train``: train any task from a YAML config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from voxdiff.cli.app import app, say


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/ for one per task)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config value: key.sub=value (repeatable)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="Where checkpoints, logs and PNGs go."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Shortcut for --set train.steps=N."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT_DIR/last.pt if present."),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue from this checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="OUT_DIR holds an earlier run: move its checkpoints, logs and PNGs "
                                        "into OUT_DIR/previous-<time>/ and start afresh."),
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print the whole validated config (defaults, extends chain and "
                                           "--set merged) as YAML and exit without training."),
) -> None:
    """Train a model; the merged config is saved with every checkpoint.

    Works on one process or under torchrun (DDP, gloo on CPU / NCCL on GPU). A folder holding an
    earlier run needs --resume (continue: only train.steps, frequencies, out_dir, device, workers and
    inference may change) or --overwrite. Ctrl-C or SIGTERM stops after the current checkpoint write.

    Example: [cyan]voxdiff train configs/pet_ppdm.yaml --set train.steps=2000 -o runs/pet[/]

    Example: [cyan]torchrun --nproc_per_node 2 -m voxdiff train configs/pet_ppdm.yaml[/]
    """
    from voxdiff.train.config import load_config
    from voxdiff.train.trainer import Trainer
    from voxdiff.train.distributed import shutdown

    overrides = list(set_)
    if out_dir is not None:
        overrides.append(f"train.out_dir={out_dir}")
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    from voxdiff.cli.app import err_console
    from voxdiff.train.checkpoint import TrainingInterrupted

    cfg = load_config(config, overrides)
    if print_config:
        from voxdiff.train.config import dump_config

        typer.echo(dump_config(cfg), nl=False)
        return
    from voxdiff.io.guard import check_path_plan

    # The files a run writes into its folder must not be the config or the manifest it reads
    # (an earlier run there is Trainer's to refuse: --resume / --overwrite).
    run_dir = Path(cfg["train"]["out_dir"])
    check_path_plan({"CONFIG": config, "data.manifest": cfg["data"].get("manifest")},
                    {"--out-dir": [run_dir / n for n in ("config.yaml", "train_log.csv", "val_log.csv", "curves.png",
                                                         "last.pt")]})
    trainer = Trainer(cfg, resume=resume_from if resume_from else resume, overwrite=overwrite)
    try:
        summary = trainer.fit()
    except TrainingInterrupted as exc:
        where = cfg["train"]["out_dir"]
        saved = (f"the last checkpoint (step {trainer.saved_step}) is in {where}: continue with --resume"
                 if trainer.saved_step is not None else "no checkpoint was written yet")
        if trainer.info.is_main:
            err_console.print(f"interrupted by {exc.signame} at step {trainer.step}; {saved}", highlight=False,
                              soft_wrap=True, markup=False)
        raise typer.Exit(128 + exc.signum) from None
    finally:
        shutdown(trainer.info)
    if trainer.info.is_main:
        say(f"trained {summary['steps']} steps in {summary['wall_s']:.1f} s -> {cfg['train']['out_dir']}")
        for k, v in summary["val"].items():
            say(f"  val {k}: {v:.4f}")
