"""The method experiment's statistics (spread, paired differences, the "holds" rule), its tables
and HTML report, its sizes (the GPU one built on the CPU) and its command's input checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deskpro.cli import main
from deskpro.experiments import method, method_report
from deskpro.experiments.ablate import schedule_settings
from deskpro.experiments.stats import holds, paired, spread


def test_spread_is_mean_sd_and_standard_error() -> None:
    s = spread([1.0, 2.0, 6.0])
    assert s["mean"] == pytest.approx(3.0)
    assert s["sd"] == pytest.approx(math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2))
    assert s["se"] == pytest.approx(s["sd"] / math.sqrt(3))
    assert (s["min"], s["max"], s["n"]) == (1.0, 6.0, 3)
    assert spread([4.0])["sd"] == 0.0
    with pytest.raises(ValueError, match="no values"):
        spread([])


def test_paired_differences_and_the_holds_rule() -> None:
    # seed by seed: +2, +1, +3 -> mean 2, sd 1, se 1/sqrt(3): holds
    p = paired([12.0, 11.0, 13.0], [10.0, 10.0, 10.0])
    assert p["values"] == [2.0, 1.0, 3.0] and p["mean"] == pytest.approx(2.0)
    assert p["se"] == pytest.approx(1 / math.sqrt(3)) and p["holds"]
    # +5, -4, +2: mean 1 but se 2.6: the ordering does not hold although the means are ordered
    q = paired([15.0, 6.0, 12.0], [10.0, 10.0, 10.0])
    assert q["mean"] == pytest.approx(1.0) and q["se"] > 1.0 and not q["holds"]
    assert not paired([1.0, 1.0], [2.0, 2.0])["holds"]  # below zero
    assert not holds(1.0, 0.0, 1)  # one seed: no error to clear
    assert holds(0.5, 0.4, 3) and not holds(0.5, 0.5, 3)  # strictly more than one standard error
    with pytest.raises(ValueError, match="seeds must pair"):
        paired([1.0], [1.0, 2.0])


def _seed(seed: int, shift: float) -> dict:
    """Per-seed results shaped as run_seed's: row r's cc R1 rises with its place in Table 3."""
    keys = ["1", "2", "3", "4", "5", "6", "7", "DeSKPro", "DeSKPro*"]
    rows = {}
    for i, key in enumerate(keys):
        r1 = 0.1 + 0.05 * i + shift
        rows[key] = {"cc": {"r1": r1, "mAP": r1 / 2}, "sc": {"r1": 0.9, "mAP": 0.8}}
    rows["2"]["cc"]["r1"] = rows["1"]["cc"]["r1"] - 0.01  # row 2 below row 1 in every seed
    attention = {
        "2": {"cloth": 0.5, "body": 0.5, "background": 0.5, "contrast": 0.0, "l_att": 0.2},
        "3": {"cloth": 0.1, "body": 0.8 + shift, "background": 0.9, "contrast": 0.7 + shift, "l_att": 0.05},
    }
    return {"seed": seed, "rows": rows, "attention": attention}


def test_summary_pairs_seeds_and_reports_each_ordering() -> None:
    seeds = [_seed(0, 0.0), _seed(1, 0.02), _seed(2, -0.01)]
    paper = {key: {"r1": 30.0 + i, "mAP": 20.0 + i} for i, key in enumerate(["1", "2", "3"])}
    summary = method_report.summarise(seeds, paper=paper)
    assert summary["rows"]["3"]["cc"]["r1"]["values"] == pytest.approx([20.0, 22.0, 19.0])
    by = {(o["better"], o["worse"], o["metric"]): o for o in summary["orderings"]}
    assert len(by) == 2 * len(method_report.TABLE3_ORDERINGS)
    assert by[("3", "1", "r1")]["values"] == pytest.approx([10.0, 10.0, 10.0])
    assert by[("3", "1", "r1")]["holds"] and not by[("2", "1", "r1")]["holds"]
    assert by[("2", "1", "r1")]["paper_diff"] == pytest.approx(1.0)
    assert "paper_diff" not in by[("5", "4", "r1")]
    trap = summary["trap"]["1"]  # same-clothes 90 against cross-clothes 10, 12, 9
    assert trap["values"] == pytest.approx([80.0, 78.0, 81.0]) and trap["holds"]
    contrast = summary["attention"]["3 - 2 contrast"]
    assert contrast["values"] == pytest.approx([70.0, 72.0, 69.0]) and contrast["holds"]
    text = method_report.format_markdown(summary)
    assert "| 3 > 1 | R1 | +10.0 ± 0.0 | +10.0, +10.0, +10.0 | yes | +2.0 |" in text
    assert "| 2 > 1 | R1 | -1.0 ± 0.0 | -1.0, -1.0, -1.0 | NO | +1.0 |" in text
    assert "| 2 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 0.0 ± 0.0 | 20.0 ± 0.0 |" in text
    assert "| 1 | 10.0 / 5.0 | 12.0 / 6.0 | 9.0 / 4.5 |" in text  # per-seed table


def test_html_report_is_self_contained(tmp_path) -> None:
    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(picture)
    summary = method_report.summarise([_seed(0, 0.0), _seed(1, 0.01)])
    summary["pictures"] = {"attention, row 3 <csa>": str(picture)}
    path = method_report.write_html(summary, tmp_path / "report.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == len(method_report.tables(summary))
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")  # no file, no server
    assert "attention, row 3 &lt;csa&gt;" in page  # captions escaped
    assert not re.search(r"(href|src)=\"(http|/)", page)


def test_sizes_fit_their_devices() -> None:
    assert method.CPU.device == "cpu" and method.CPU.threads == 1 and len(method.CPU.seeds) >= 3
    gpu = method.GPU
    assert gpu.backbone == "osnet_x1_0" and gpu.body_size[0] >= 256 and gpu.body_size[1] >= 128
    assert gpu.image_size[0] >= gpu.body_size[0] and len(gpu.seeds) >= 3 and gpu.device == "cuda"
    settings = schedule_settings(gpu, 1, False, device="cuda")
    assert settings.overrides["backbone"] == "osnet_x1_0" and settings.overrides["seed"] == 1
    assert method.size_named("cpu", (4, 5)).seeds == (4, 5)
    with pytest.raises(ValueError, match="--size: unknown size 'h100'"):
        method.size_named("h100")


def test_gpu_size_model_builds_and_runs_on_the_cpu() -> None:
    """The GPU size's network (official OSNet x1.0) at its body size: one forward on the CPU."""
    from deskpro.model.deskpro import DeSKPro

    torch.manual_seed(0)
    model = DeSKPro(10, backbone=method.GPU.backbone).eval()
    h, w = method.GPU.body_size
    with torch.no_grad():
        _, attention = model.nocloth_net(torch.zeros(1, 3, h, w), full=False)
    assert attention.shape == (1, 1, h // 8, w // 8)
    widths = [m.out_channels for m in model.nocloth_net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(widths) >= 512  # x1.0 widths (x0.25 tops out at 128)


def test_method_command_refuses_bad_seeds() -> None:
    result = CliRunner().invoke(main, ["experiment", "method", "--seeds", "0,x"])
    assert result.exit_code != 0 and "is not a comma-separated list of integers" in result.output
    result = CliRunner().invoke(main, ["experiment", "method", "--seeds", "1,1"])
    assert result.exit_code != 0 and "need distinct seeds" in result.output


@pytest.mark.slow
def test_gpu_script_runs_the_tiny_size_end_to_end(tmp_path) -> None:
    """benchmarks/method_gpu.sh cannot rot: its tiny size on the CPU trains every run of two seeds
    and writes the JSON, the tables, the report and the pictures."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "method"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    script = root / "benchmarks" / "method_gpu.sh"
    result = subprocess.run(
        ["bash", str(script), str(out), "--size", "tiny", "--seeds", "0,1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "method.json").read_text())
    assert summary["complete"] and [s["seed"] for s in summary["seeds"]] == [0, 1]
    assert set(summary["rows"]) == {"1", "2", "3", "4", "5", "6", "7", "DeSKPro", "DeSKPro*"}
    assert {"2", "3", "3 - 2 contrast"} <= set(summary["attention"])
    assert summary["paper"]["DeSKPro"] == {"r1": 52.0, "mAP": 29.8}
    assert (out / "method.md").read_text().strip() == method_report.format_markdown(summary).strip()
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert all(Path(p).is_file() for p in summary["pictures"].values()) and len(summary["pictures"]) >= 4
    assert int((out / "time.txt").read_text()) > 0
