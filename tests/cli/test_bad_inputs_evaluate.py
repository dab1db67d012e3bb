"""Bad-input corpus, ``evaluate``: broken predictions, a constant target, an unwritable output."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import BROKEN_VOLUMES, no_output, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


@pytest.mark.parametrize("bad", BROKEN_VOLUMES + ["smaller"])
def test_evaluate_prediction(bad, corpus, capsys, tmp_path):
    out = tmp_path / "m.csv"
    assert_user_error(*run_main(["evaluate", "--pred", corpus[bad], "--target", corpus["good"], "--out", out], capsys),
                      corpus[bad].name)
    no_output(out)


def test_evaluate_constant_target_and_unwritable_output(corpus, capsys, tmp_path):
    assert_user_error(*run_main(["evaluate", "--pred", corpus["good"], "--target", corpus["constant"]], capsys))
    out = tmp_path / "no_such_folder" / "m.csv"
    assert_user_error(*run_main(["evaluate", "--pred", corpus["good"], "--target", corpus["good"], "--out", out],
                                capsys), "no_such_folder")
