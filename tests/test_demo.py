"""The demo end to end in its quick mode (tiny sizes, a few iterations): every step runs and reports."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deskpro.cli import main


@pytest.mark.slow
def test_quick_demo_runs_every_step(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--executor", "local"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for n in range(1, 9):
        assert f"[{n}/8]" in result.output
    assert "packed and verified" in result.output
    assert "baseline (global stream)" in result.output and "DeSKPro" in result.output
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["cc"]) == {"baseline/body", "deskpro/body", "deskpro/face", "deskpro/both"}
    for row in summary["cc"].values():
        assert 0.0 <= row["mAP"] <= 1.0 and row["queries"] > 0
    for run in ("teacher", "baseline", "deskpro"):
        assert (out / run / "checkpoint.pt").is_file() and (out / run / "log.jsonl").is_file()
    # A second run into the same folder reuses the data and starts the training runs over.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert len((out / "deskpro" / "log.jsonl").read_text().splitlines()) == 1
