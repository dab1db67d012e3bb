"""train.init_from: fine-tuning a trained model, growing it by new inputs (scalar conditions)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import add_noisier_column, make_pairs, run_main, tiny_config
from voxdiff.errors import VoxdiffError
from voxdiff.train.init import transfer_weights


def test_transfer_copies_equal_shapes_and_zero_fills_added_input_channels():
    src = {"a": torch.randn(4, 3, 3), "conv": torch.randn(8, 2, 3, 3, 3)}
    tgt = {"a": torch.zeros(4, 3, 3), "conv": torch.ones(8, 5, 3, 3, 3)}
    out, grown = transfer_weights(tgt, src)
    assert grown == ["conv"]
    assert torch.equal(out["a"], src["a"]) and out["a"] is not src["a"]
    assert torch.equal(out["conv"][:, :2], src["conv"]) and not out["conv"][:, 2:].any()


@pytest.mark.parametrize("tgt, msg", [
    ({"a": torch.zeros(4, 3, 3)}, "the start model has conv, this config's network not"),
    ({"a": torch.zeros(4, 3, 3), "conv": torch.zeros(8, 2, 3, 3, 3), "b": torch.zeros(1)}, "this config's network has b, the start model not"),
    ({"a": torch.zeros(5, 3, 3), "conv": torch.zeros(8, 2, 3, 3, 3)}, r"weight a has shape \(4, 3, 3\)"),
    ({"a": torch.zeros(4, 3, 3), "conv": torch.zeros(8, 1, 3, 3, 3)}, "only added input channels"),
])
def test_transfer_refuses_another_architecture_naming_the_weight(tgt, msg):
    src = {"a": torch.randn(4, 3, 3), "conv": torch.randn(8, 2, 3, 3, 3)}
    with pytest.raises(VoxdiffError, match=msg):
        transfer_weights(tgt, src)


def _start_model(tmp_path):
    from voxdiff.train.trainer import Trainer

    manifest = add_noisier_column(make_pairs(tmp_path, n=4))
    Trainer(tiny_config(tmp_path / "a", manifest), quiet=True).fit()
    return manifest, tmp_path / "a" / "run" / "last.pt"


def test_a_grown_model_starts_as_the_start_model_then_learns_the_condition(tmp_path, capsys):
    """Given the dose or not, the fine-tuned model's step-0 outputs are the start model's, exactly."""
    from voxdiff.models import load_model
    from voxdiff.train.trainer import Trainer

    manifest, start = _start_model(tmp_path)
    cfg = tiny_config(tmp_path / "b", manifest, init_from=str(start), steps=2)
    cfg["data"]["roles"] = {"source": ["source", "noisier"], "target": "target"}
    cfg["data"]["conditions"] = {"dose": {"source": 20, "noisier": 5}}
    cfg["model"]["conditions"] = {"dose": "log"}
    tr = Trainer(cfg)
    out = capsys.readouterr().out
    assert f"initialised from {start} (step 4)" in out and "new input channels start at zero" in out
    assert tr.init_info["grown"] == ["net.backbone.conv_in.weight"]  # only the first layer sees the new channels
    assert tr.init_info["held_out_seen"] == []  # same split: the start model never saw these val cases

    ref, _ = load_model(start)
    y = torch.rand(1, 1, 16, 16, 16)
    runs = {}
    for name, model in (("start", ref), ("grown", tr.task.eval())):
        for cond in (None, torch.tensor([[5.0]])):
            g = torch.Generator().manual_seed(3)
            kw = {} if cond is None or name == "start" else {"conditions": cond}
            runs[name, cond is None] = model.predict({"source": y}, steps=2, generator=g, **kw)["output"]
    assert torch.allclose(runs["grown", True], runs["start", True], atol=1e-6)
    assert torch.allclose(runs["grown", False], runs["start", True], atol=1e-6)
    # The EMA starts at the start model too, so the first checkpoint is not a blend with random weights.
    assert all(torch.equal(tr.ema.shadow[k], v) for k, v in tr.task.state_dict().items() if k in tr.ema.shadow)

    tr.fit()
    grown, ckpt = load_model(tmp_path / "b" / "run" / "last.pt")
    assert ckpt["init"]["spec"] == str(start) and ckpt["init"]["step"] == 4
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = grown.predict({"source": y}, steps=2, generator=g1, conditions=torch.tensor([[5.0]]))["output"]
    b = grown.predict({"source": y}, steps=2, generator=g2, conditions=torch.tensor([[20.0]]))["output"]
    assert not torch.allclose(a, b)  # two steps were enough to make the dose channels matter


def test_resume_keeps_its_own_weights_and_a_bad_start_model_is_one_clear_error(tmp_path, capsys):
    from voxdiff.train.trainer import Trainer

    manifest, start = _start_model(tmp_path)
    cfg = tiny_config(tmp_path / "b", manifest, init_from=str(start), steps=2)
    Trainer(cfg, quiet=True).fit()
    cfg4 = tiny_config(tmp_path / "b", manifest, init_from=str(start), steps=4)
    start.rename(start.with_name("moved.pt"))  # a resumed run no longer needs the start model
    tr = Trainer(cfg4, resume=True, quiet=True)
    assert tr.step == 2 and tr.init_info["step"] == 4
    tr.fit()

    wide = tiny_config(tmp_path / "c", manifest, init_from=str(start.with_name("moved.pt")))
    wide["model"]["backbone"]["base_channels"] = 8
    with pytest.raises(VoxdiffError, match=r"train.init_from .*moved.pt: weight .* has shape"):
        Trainer(wide, quiet=True)
    from voxdiff.train.config import dump_config

    (tmp_path / "c.yaml").write_text(dump_config(tiny_config(tmp_path / "c", manifest)))
    code, _, err = run_main(["train", tmp_path / "c.yaml", "--set", "train.init_from=pretrained:nope",
                             "-o", tmp_path / "d"], capsys)
    assert code == 2 and "unknown pretrained model 'nope'" in err and not (tmp_path / "d").exists()


def test_init_from_warns_when_the_start_model_trained_on_this_runs_held_out_cases(tmp_path, capsys):
    from voxdiff.train.trainer import Trainer

    manifest, start = _start_model(tmp_path)
    cfg = tiny_config(tmp_path / "b", manifest, init_from=str(start), steps=1)
    cfg["data"]["split_seed"] = 5  # another split: some of the start model's training cases are validated here
    tr = Trainer(cfg)
    out = capsys.readouterr().out
    seen = tr.init_info["held_out_seen"]
    assert seen and set(seen) <= set(tr.split["val"]) and "their scores are not held-out" in out


def test_a_start_model_inside_out_dir_is_read_before_overwrite_moves_the_run_aside(tmp_path, capsys):
    """Fine-tuning a run into its own folder keeps the earlier run (moved aside, intact); a bad start model moves nothing."""
    from tests.helpers import digest
    from voxdiff.train.trainer import Trainer

    manifest, start = _start_model(tmp_path)
    run = start.parent
    before = digest(run)
    bad = tiny_config(tmp_path / "a", manifest, init_from=str(tmp_path / "nope.pt"))
    with pytest.raises(VoxdiffError, match="nope.pt: checkpoint not found"):
        Trainer(bad, overwrite=True, quiet=True)
    assert digest(run) == before  # refused before anything in the folder moved
    tr = Trainer(tiny_config(tmp_path / "a", manifest, init_from=str(start), steps=1), overwrite=True, quiet=True)
    assert tr.init_info["step"] == 4
    moved = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert len(moved) == 1 and digest(moved[0]) == before
