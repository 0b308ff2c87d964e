"""benchmarks/gpu_check.sh cannot rot: its tiny run works on a CPU and writes its JSON and table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_gpu_check_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "check"
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["random_weights"] is True and report["tiny"] is True
    nets = {row["net"] for row in report["nets"]}
    assert {"schp", "retinaface-resnet50", "retinaface-mobilenet0.25", "gpen-256", "deskpro"} <= nets
    for row in report["nets"]:
        assert row["images_per_s"] > 0 and row["gflops_per_image"] > 0
    first = report["nets"][0]
    assert (first["batch"], first["precision"], first["channels_last"]) == (1, "fp32", False)
    assert first["speedup_vs_batch1"] == 1.0
    assert {
        (r["batch"], r["precision"], r["channels_last"]) for r in report["nets"] if r["net"] == "schp"
    } == {(b, "fp32", c) for b in (1, 2) for c in (False, True)}
    training = report["training"]
    assert training["images_per_s"] > 0 and 0 <= training["data_wait_share"] <= 1
    assert "skipped" in report["gpu_jpeg_decode"]  # no GPU here
    table = (out / "gpu_check.md").read_text()
    assert "| net | input | batch |" in table and "Random weights" in table
