"""Configs are validated against the schema at load: files, --set overrides and configs stored in checkpoints.

Each bad value is refused through the CLI with exit 2, one line naming the key path and the value,
no traceback, and nothing changed on disk.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import assert_user_error, digest, make_pairs, run_main, tiny_config
from voxdiff.config import config_difference, deep_merge, validate_config
from voxdiff.config import schema as S
from voxdiff.errors import VoxdiffError
from voxdiff.train.checkpoint import load_checkpoint, save_checkpoint
from voxdiff.train.config import DEFAULTS, load_config
from voxdiff.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg["task"] and validate_config(cfg) == cfg


def test_pretrained_checkpoint_config_validates():
    ckpt = load_checkpoint(REPO / "src/voxdiff/pretrained/pet-denoise.pt")
    assert ckpt["config"]["task"] == "translation"
    assert validate_config(ckpt["config"]) == ckpt["config"]


def test_every_task_has_a_model_schema():
    from voxdiff.tasks import task_names

    for name in task_names():
        assert S.model_schema(name) is not None, name


def test_task_defaults_are_known_to_the_schema():
    """Every key a task's own defaults hold is a key its model schema accepts (catches a new key)."""
    from voxdiff.tasks import task_class, task_names

    for name in task_names():
        cls = task_class(name)
        defaults = getattr(cls, "defaults", None) or getattr(inspect.getmodule(cls), "DEFAULT_MODEL", None) or {}
        validate_config({"task": name, "model": {**defaults, **({"num_classes": 2} if "num_classes" in
                                                                  S.model_schema(name).fields else {})}})


def _params(fn, drop=("self", "in_channels", "out_channels")) -> set[str]:
    return {n for n in inspect.signature(fn).parameters if n not in drop}


def test_schema_mirrors_the_constructors():
    """Process and backbone sections know exactly the constructor arguments, and the same choices."""
    from voxdiff.diffusion import bridge, ddpm
    from voxdiff.nets import factory, invertible, unet

    assert set(S.PROCESS["ddpm"].fields) == _params(ddpm.DDPMProcess.__init__)
    assert set(S.PROCESS["bridge"].fields) == _params(bridge.BridgeProcess.__init__)
    assert set(S.BACKBONES["unet"].fields) == _params(unet.UNet3D.__init__)
    assert set(S.BACKBONES["invertible"].fields) == _params(invertible.InvertibleUNet.__init__)
    assert set(S.BACKBONES["monai"].fields) == _params(factory.MonaiDiffusionUNet.__init__)
    assert S.BETA_SCHEDULES == ddpm.BETA_SCHEDULES and S.DDPM_PREDICTION_TYPES == ddpm.DDPM_PREDICTION_TYPES
    assert S.BRIDGE_SCHEDULES == bridge.BRIDGE_SCHEDULES
    assert S.BRIDGE_PREDICTION_TYPES == bridge.BRIDGE_PREDICTION_TYPES
    assert S.COUPLINGS == invertible.COUPLINGS


def test_train_config_reexports_the_moved_helpers():
    from voxdiff.train import config as old

    assert old.deep_merge is deep_merge
    assert old.parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


#: --set override -> words the one error line must hold (besides "config").
BAD_OVERRIDES = {
    "train.lr=fast": ["train.lr", "'fast'", "number > 0"],
    "train.lr=.nan": ["train.lr", "nan"],
    "train.lr=-.inf": ["train.lr", "inf"],
    "train.lr=true": ["train.lr", "boolean"],
    "train.lr=0": ["train.lr", "> 0"],
    "train.log_every=0": ["train.log_every", "positive integer", "got 0"],
    "train.val_every=-1": ["train.val_every", ">= 0", "-1"],
    "train.ckpt_every=2.5": ["train.ckpt_every", "2.5"],
    "train.steps=yes": ["train.steps", "boolean"],
    "train.ema_decay=1.5": ["train.ema_decay", "1.5"],
    "train.betas=[0.9]": ["train.betas", "list of 2"],
    "train.optimizer=adam": ["train.optimizer", "adamw"],
    "train.device=gpu0": ["train.device", "'gpu0'"],
    "train.max_minutes=0": ["train.max_minutes", "got 0"],
    "seed=99999999999999999999": ["seed", "0..4294967295"],
    "seed=-1": ["seed", "-1"],
    "data.crop_size=[64,64]": ["data.crop_size", "3 positive integers", "[64, 64]"],
    "data.crop_size=0": ["data.crop_size", "got 0"],
    "data.val_fraction=1.5": ["data.val_fraction", "1.5"],
    "data.foreground_fraction=.nan": ["data.foreground_fraction", "nan"],
    "data.normalization.source.mode=percentil": ["data.normalization.source.mode", "did you mean percentile?"],
    "data.normalization.source.upper=500": ["data.normalization.source.upper", "500"],
    "model.gradient_loss_wieght=0.1": ["model.gradient_loss_wieght", "unknown key", "did you mean gradient_loss_weight?"],
    "model.num_classes=3": ["model.num_classes", "unknown key"],
    "model.process.num_train_timesteps=0": ["model.process.num_train_timesteps", "positive integer", "got 0"],
    "model.process.kind=ddmp": ["model.process.kind", "did you mean ddpm?"],
    "model.process.noise_scale=-1": ["model.process.noise_scale", "-1"],
    "model.backbone.base_chanels=8": ["model.backbone.base_chanels", "did you mean base_channels?"],
    "model.backbone.channel_mults=[1,0]": ["model.backbone.channel_mults", "[1, 0]"],
    "model.puzzle_factor=[2,2]": ["model.puzzle_factor", "[2, 2]"],
    "inference.steps=0": ["inference.steps", "got 0"],
    "inference.sw_overlap=1": ["inference.sw_overlap", "got 1"],
    "traning.steps=3": ["traning", "did you mean train?"],
    "task=translaton": ["task", "did you mean translation?"],
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    manifest = make_pairs(d, n=2, size=8)
    (d / "c.yaml").write_text(f"task: translation\ndata: {{manifest: {manifest}, crop_size: 8}}\n"
                              f"train: {{steps: 1, out_dir: {d / 'run'}}}\n")
    return d / "c.yaml"


@pytest.mark.parametrize("override", sorted(BAD_OVERRIDES))
def test_bad_override_is_one_line_naming_key_and_value(override, config_file, capsys):
    before = digest(config_file.parent)
    line = assert_user_error(*run_main(["train", config_file, "--set", override], capsys), "config")
    for word in BAD_OVERRIDES[override]:
        assert word in line, (word, line)
    assert digest(config_file.parent) == before and not (config_file.parent / "run").exists()


def test_bad_values_in_the_file_itself(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("task: translation\ntrain:\n  lr: .inf\n")
    assert_user_error(*run_main(["train", tmp_path / "c.yaml"], capsys), "train.lr", "inf")
    (tmp_path / "c.yaml").write_text("task: segmentation\nmodel: {process: {kind: ddpm}}\n")
    assert_user_error(*run_main(["train", tmp_path / "c.yaml"], capsys), "model.num_classes", "required")
    (tmp_path / "c.yaml").write_text("data: [1, 2]\n")
    assert_user_error(*run_main(["train", tmp_path / "c.yaml"], capsys), "config data", "mapping")


def test_yaml_1_1_exponent_text_becomes_a_number():
    cfg = load_config(None, ["train.lr=5e-4"])  # PyYAML reads 5e-4 (no dot) as a string
    assert cfg["train"]["lr"] == 5e-4 and isinstance(cfg["train"]["lr"], float)


def test_kind_defaults_follow_the_task():
    # translation's process is a bridge unless told otherwise: bridge keys pass, ddpm keys do not.
    load_config(None, ["model.process.schedule=sin"])
    with pytest.raises(VoxdiffError, match="model.process.beta_schedule: unknown key"):
        load_config(None, ["model.process.beta_schedule=cosine"])
    load_config(None, ["task=synthesis", "model.process.beta_schedule=cosine", "model.process.sampler=ddim"])


def test_config_difference_and_allow_list():
    a = deep_merge(DEFAULTS, {"data": {"crop_size": 8}})
    assert config_difference(a, a) is None
    b = deep_merge(a, {"train": {"steps": 99, "log_every": 3, "out_dir": "x"}, "inference": {"steps": 7}})
    assert config_difference(a, b) is None
    assert config_difference(a, deep_merge(a, {"seed": 1})) == ("seed", 0, 1)
    assert config_difference(a, deep_merge(a, {"data": {"crop_size": [8, 8, 8]}}))[0] == "data.crop_size"
    assert config_difference(a, deep_merge(a, {"train": {"lr": 2e-4}})) is None  # same value
    assert config_difference(a, deep_merge(a, {"model": {"puzzle_factor": 2}})) == ("model.puzzle_factor", "(unset)", 2)


# ---------------------------------------------------------------------------- stored configs
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    manifest = make_pairs(d, n=2, size=8)
    cfg = tiny_config(d, manifest)
    cfg["train"].update(steps=1, val_every=0)
    Trainer(cfg, quiet=True).fit()
    return d / "run" / "last.pt"


#: How a stored config was edited -> words of the error.
EDITS = {
    "unknown_key": (lambda c: c["model"].update(gradient_loss_wieght=0.1),
                    ["stored config model.gradient_loss_wieght", "did you mean gradient_loss_weight?"]),
    "bad_lr": (lambda c: c["train"].update(lr="fast"), ["stored config train.lr", "'fast'"]),
    "bool_steps": (lambda c: c["inference"].update(steps=True), ["stored config inference.steps", "boolean"]),
    "nan_process": (lambda c: c["model"].update(process={"kind": "bridge", "noise_scale": float("nan")}),
                    ["stored config model.process.noise_scale", "nan"]),
    "zero_timesteps": (lambda c: c["model"].update(process={"kind": "bridge", "num_train_timesteps": 0}),
                       ["model.process.num_train_timesteps", "got 0"]),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_checkpoint_config_is_refused(edit, checkpoint, tmp_path, capsys):
    ckpt = torch.load(checkpoint, weights_only=True)
    change, words = EDITS[edit]
    change(ckpt["config"])
    bad = save_checkpoint(tmp_path / "edited.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    with pytest.raises(VoxdiffError) as info:
        load_checkpoint(bad)
    for word in words:
        assert word in str(info.value), (word, info.value)
    image = checkpoint.parent.parent / "c0_src.nii.gz"
    before = digest(tmp_path)
    line = assert_user_error(*run_main(["translate", "-m", bad, "-i", image, "-o", tmp_path / "out.nii.gz"], capsys),
                             "edited.pt", *words)
    assert "\n" not in line
    assert digest(tmp_path) == before


def test_stored_config_of_a_fresh_run_round_trips(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    assert yaml.safe_load((checkpoint.parent / "config.yaml").read_text()) == ckpt["config"]
