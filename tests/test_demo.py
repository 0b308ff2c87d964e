"""The demo end to end in its quick mode (tiny sizes, a few iterations): every step runs and reports,
the reduced Table 3 and the orderings are printed, the pictures are written, and a second run of the
same seed gives the same table."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.demo import DEMO_ROWS, ORDERINGS, check_orderings, demo_markdown, format_orderings


def _row(key: str, r1: float, m: float) -> dict:
    return {"key": key, "results": {"cc": {"r1": r1, "mAP": m}}}


def test_orderings_compare_both_metrics() -> None:
    rows = [_row("1", 0.2, 0.1), _row("3", 0.3, 0.05), _row("4", 0.5, 0.5), _row("5", 0.4, 0.4)]
    checks = check_orderings(rows)
    assert [(c["better"], c["worse"]) for c in checks] == [("3", "1"), ("5", "4")]  # DeSKPro missing
    assert (checks[0]["r1_holds"], checks[0]["mAP_holds"]) == (True, False)
    assert (checks[1]["r1_holds"], checks[1]["mAP_holds"]) == (False, False)
    text = format_orderings(checks)
    assert "row 3 > row 1: R1 30.0 vs 20.0, mAP 5.0 vs 10.0: holds on R1 only" in text
    assert "row 5 > row 4" in text and "does NOT hold" in text
    assert {k for pair in ORDERINGS for k in pair} <= set(DEMO_ROWS)


@pytest.mark.slow
def test_quick_demo_runs_every_step_and_repeats(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--executor", "local", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for n in range(1, 8):
        assert f"[{n}/7]" in result.output
    assert "packed and verified" in result.output and "cross-clothes" in result.output
    assert "The paper's orderings on cross-clothes" in result.output
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["rows"]) == list(DEMO_ROWS)
    for row in summary["rows"].values():
        assert 0.0 <= row["cc"]["mAP"] <= 1.0 and row["cc"]["queries"] > 0
    for run in ("teacher", "global", "deskpro", "student"):
        assert (out / "runs" / run / "checkpoint.pt").is_file()
    assert set(summary["pictures"]) == {"attention", "ranks", "curves"}
    assert 0.0 <= summary["attention"]["cloth"] <= 1.0 and summary["attention"]["images"] > 0
    for picture in summary["pictures"].values():
        assert picture in result.output and (out / "pictures").joinpath(picture.split("/")[-1]).is_file()
    table = (out / "table.md").read_text()
    assert "| DeSKPro | rows 3+5 |" in table and "paper R1" in table and "cloth cells" in table
    assert table == demo_markdown(summary) + "\n"
    # A second run into the same folder reuses the data, trains again and writes the same table.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["rows"] == summary["rows"]
    assert (out / "table.md").read_text() == table
    assert len((out / "runs" / "deskpro" / "log.jsonl").read_text().splitlines()) == 1


def test_demo_threads_hold_through_the_trainers_thread_choice(monkeypatch) -> None:
    import torch

    from deskpro.common.threads import ENV_OVERRIDE, THREAD_ENV, apply_threads
    from deskpro.demo import _torch_threads

    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    for name in THREAD_ENV:  # apply_threads sets them: restored after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    before = torch.get_num_threads()
    with _torch_threads(1):
        assert apply_threads(workers=0) == 1  # what the training loader calls each epoch
        assert torch.get_num_threads() == 1
    assert ENV_OVERRIDE not in os.environ and torch.get_num_threads() == before
