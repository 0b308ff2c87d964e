"""preprocess -> pack -> train -> evaluate on a small tree of each cloth-changing benchmark's layout
(the synthetic set re-laid out in its naming; oracle parser and detector; a tiny baseline run)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.config import preset
from deskpro.manifests import build_manifest
from deskpro.pipeline.runner import StageRunOptions, run_preprocess
from deskpro.shards.pack import pack
from deskpro.synthetic import generator
from deskpro.train.protocols import DEFINITIONS, expand
from tests._cc_layouts import relayout_synthetic

BACKENDS = {
    "parse": {"backend": "oracle"},
    "detect": {
        "backend": "oracle",
        "min_score": 0.0,
        "min_size": 0.0,
        "max_center_y": 1.0,
        "face_lr_size": 16,
    },
    "restore": {"backend": "none", "face_hr_size": 32},
}


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("cc_e2e") / "synth"
    generator.generate(root, progress=False, identities=12, images_per_camera=1, image_size=(96, 32), seed=5)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["ltcc", "vc-clothes", "deepchange", "last"])
def test_preprocess_pack_train_evaluate(synthetic_set, tmp_path, dataset) -> None:
    root = relayout_synthetic(synthetic_set, tmp_path / "data", dataset)
    manifest = tmp_path / "manifest.parquet"
    table = build_manifest(dataset, root, manifest)
    assert table.num_rows == 12 * 3
    run_preprocess(manifest, tmp_path / "work", BACKENDS, StageRunOptions(executor="local", progress=False))
    shards = tmp_path / "shards"
    pack(tmp_path / "work", shards, body_size=(32, 16), face_size=16, codec="raw", progress=False)
    run = tmp_path / "run"
    # One torch thread: the runs are tiny, and a second thread only contends on a busy machine.
    args = [
        "--threads",
        "1",
        "train",
        shards,
        "-o",
        run,
        "--baseline",
        "--from-scratch",
        "--backbone",
        "osnet_x0_25",
    ]
    args += ["--epochs", "1", "--warmup-epochs", "0", "--p", "2", "--k", "2", "--max-iters", "2"]
    args += ["--workers", "0", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report_file = tmp_path / "report.json"
    args = [
        "--threads",
        "1",
        "evaluate",
        shards,
        "--checkpoint",
        run / "checkpoint.pt",
        "--device",
        "cpu",
        "--trials",
        "1",
    ]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--json", report_file, "--no-progress"]])
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())
    assert report["dataset"] == dataset
    reported = [r["protocol"] for r in report["results"]]
    assert list(dict.fromkeys(reported)) == expand(preset(dataset).protocols)
    for name in expand(preset(dataset).protocols):
        assert f"{name}: {DEFINITIONS[name].description}" in result.output
    for row in report["results"]:
        assert row["queries"] > 0 and row["gallery"] > 0 and 0.0 <= row["mAP"] <= 1.0
