"""Tables at an 80-column console print every number whole; bench --json/--markdown stay exact."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from rich.console import Console
from rich.text import Text

from voxdiff.cli import main
from voxdiff.cli.bench import memory_table, sampling_table
from voxdiff.cli.tables import FitTable


def _render(renderable, width=80) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def _memory_results(variants: bool) -> list[dict]:
    rows = []
    for i, method in enumerate(["full3d", "full3d-sdpa", "ppdm4-nograd", "idm-stored"]):
        for size in (96, 256):
            r = dict(method=method, size=size, train_size=size // 2, params=12_345_678 + i, peak_mib=1436.4 + 1000 * i,
                     mem_ratio=0.5 + i / 7, saved_mib=123456.0 + i, step_s=1234.56 + i, time_ratio=12.34 + i,
                     growth=1.875 + i, depth=2)
            if variants:
                r.update(precision="bf16", checkpointing=True, batch=2, accumulate=4)
            rows.append(r)
    rows.append(dict(method="ppdm2", size=512, error="out of memory", precision="fp32"))
    return rows


def _numbers(table: FitTable) -> list[str]:
    return [Text.from_markup(c).plain for row in table.rows for c, col in zip(row, table.columns) if col.numeric and c]


@pytest.mark.parametrize("variants", [False, True])
@pytest.mark.parametrize("width", [80, 60])
def test_memory_table_never_cuts_a_number(variants, width):
    table = memory_table(_memory_results(variants))
    text = _render(table, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for number in _numbers(table):
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", text), (number, text)
    assert "1436" in text and "123456" in text and "1234.56" in text


def test_sampling_table_and_a_wide_fake_table():
    results = [dict(run=f"ppdm-r{i}-{'x' * 20}", steps=1000, sec_per_step=123.456, seconds=123456.7,
                    ratio_to_ppdm=1436.0, peak_mib=98765.0, extrapolated=True, measured_steps=10) for i in range(3)]
    text = _render(sampling_table(results, "ppdm2"))
    assert "…" not in text and "123456.7" in text and "98765" in text and "1436.0" in text
    t = FitTable(title="many numbers")
    t.add_column("name")
    for k in range(14):
        t.add_column(f"metric number {k}", numeric=True)
    t.add_row("case-with-a-long-name", *[f"{1436.123456 * (k + 1):.6g}" for k in range(14)])
    text = _render(t)
    assert "(continued)" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for k in range(14):
        assert f"{1436.123456 * (k + 1):.6g}" in text
    assert text.count("case-with-a-long-name") >= 2  # the key column is repeated in each part


def test_info_at_80_columns_keeps_numbers_and_reads_dicom(tmp_path, capsys, monkeypatch):
    from tests.io.dicom_factory import pet_tags, smooth_volume, write_series
    from voxdiff.io import save_volume

    monkeypatch.setenv("COLUMNS", "80")
    nested = tmp_path / ("a-rather-long-folder-name-" * 3) / "sub"
    nested.mkdir(parents=True)
    arr = np.full((8, 9, 10), 1436.0625, np.float32)
    arr[0, 0, 0] = -123456.75
    nii = save_volume(arr, nested / "volume-with-a-long-name.nii.gz", affine=np.diag([1.25, 2.5, 3.75, 1]))
    write_series(tmp_path / "pet", smooth_volume(lo=0, hi=30000), np.diag([2.0, 2.0, 3.0, 1.0]), modality="PT",
                 per_slice_rescale=True, pet=pet_tags())
    out = ""
    for args in ([str(nii), str(tmp_path / "pet")], [str(tmp_path / "pet"), "--units", "suv"]):
        with pytest.raises(SystemExit) as exit_:
            main(["info", *args])
        assert exit_.value.code in (0, None)
        out += capsys.readouterr().out
    assert "…" not in out
    for number in ("8x9x10", "1.25x2.5x3.75", "1436.06", "-123457", "16x16x8", "2x2x3", "BQML", "suv"):
        assert number in out, (number, out)


def test_bench_sampling_json_and_markdown_are_exact(tmp_path, capsys, monkeypatch):
    import voxdiff.bench.sampling as sampling

    fake = [dict(run="ppdm2", method="ppdm2", steps=5, sec_per_step=0.123456789, seconds=0.617283945,
                 peak_mib=1436.123, extrapolated=False, measured_steps=5)]
    monkeypatch.setattr(sampling, "run_sampling_benchmark", lambda *a, **k: [dict(r) for r in fake])
    monkeypatch.setenv("COLUMNS", "80")
    js, md = tmp_path / "s.json", tmp_path / "s.md"
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "sampling", "--methods", "ppdm2", "--size", "8", "--json", str(js), "--markdown", str(md)])
    assert exit_.value.code in (0, None), capsys.readouterr()
    result = json.loads(js.read_text())["results"][0]
    assert result["sec_per_step"] == 0.123456789 and result["peak_mib"] == 1436.123
    assert "ppdm2" in md.read_text() and "…" not in capsys.readouterr().out
