"""Bad-input corpus, ``train``: broken configs and manifests."""

from __future__ import annotations

from pathlib import Path

from tests.cli.bad_input_helpers import no_output, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


def test_train_bad_configs_and_manifests(corpus, capsys, tmp_path):
    assert_user_error(*run_main(["train", tmp_path / "missing.yaml"], capsys), "missing.yaml")
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    assert_user_error(*run_main(["train", tmp_path / "list.yaml"], capsys), "list.yaml")
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    assert_user_error(*run_main(["train", tmp_path / "broken.yaml"], capsys), "broken.yaml")

    def config(manifest_text: str) -> Path:
        (tmp_path / "m.csv").write_text(manifest_text)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"task: translation\ndata: {{manifest: {tmp_path / 'm.csv'}, crop_size: 8}}\n"
                       f"train: {{steps: 1, out_dir: {tmp_path / 'run'}}}\n")
        return cfg

    good, smaller = corpus["good"], corpus["smaller"]
    assert_user_error(*run_main(["train", config(f"case,image\na,{good}\n")], capsys), "m.csv")
    assert_user_error(*run_main(["train", config("case,source,target\n")], capsys), "m.csv")
    assert_user_error(*run_main(["train", config(f"case,source,target\na,{good},{corpus['missing']}\n")], capsys),
                      corpus["missing"].name)
    assert_user_error(*run_main(["train", config(f"case,source,target\na,{good},{smaller}\nb,{good},{good}\n")],
                                capsys), smaller.name)
    assert_user_error(*run_main(["train", config(f"case,source,target\na,{good},{good}\n"), "--set", "train.steps=0"],
                                capsys), "train.steps")
    no_output(tmp_path / "run" / "last.pt")
