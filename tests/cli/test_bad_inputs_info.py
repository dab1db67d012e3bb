"""Bad-input corpus, ``info``: every broken volume is refused with one line naming it."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import BROKEN_VOLUMES, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


@pytest.mark.parametrize("bad", BROKEN_VOLUMES)
def test_info(bad, corpus, capsys):
    if bad in ("nan", "inf"):
        pytest.skip("info reports non-finite volumes instead of refusing them")
    assert_user_error(*run_main(["info", corpus[bad]], capsys), corpus[bad].name)
