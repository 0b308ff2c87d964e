"""The backend registry and the stage options: one default each, checked ranges, driver-side checks."""

from __future__ import annotations

import dataclasses
import io
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deskpro import cli, weights
from deskpro.common import images
from deskpro.common.torch_utils import resolve_device
from deskpro.pipeline import backends, options
from deskpro.pipeline.nets import gpen, schp
from deskpro.pipeline.options import DetectOptions, ParseOptions, RestoreOptions, StageConfigError
from deskpro.pipeline.runner import check_stage, stage_options


def test_every_registry_entry_is_consistent() -> None:
    for b in backends.REGISTRY:
        assert b.stage in options.STAGE_NAMES
        help_text = dataclasses.fields(options.OPTIONS[b.stage])
        backend_help = next(f for f in help_text if f.name == "backend").metadata["help"]
        assert b.name in backend_help, (b.stage, b.name)  # the CLI help lists every backend
        if b.weights_entry:
            for labels in options.LABEL_SETS if "{labels}" in b.weights_entry else ("lip",):
                assert weights.get(b.weights_entry.format(labels=labels))
        assert b.needs_weights == b.needs_gpu  # only networks need files, and they want a GPU
        for name in b.defaults:
            assert name in options.OPTIONS[b.stage].field_names()
    assert options.LABEL_SETS == tuple(schp.LABELS)
    assert set(backends.NO_NET_BACKENDS) == {"oracle", "none"}


def test_backend_defaults_fill_only_the_options_left_unset() -> None:
    retina = backends.get("detect", "retinaface-resnet50").resolve(DetectOptions())
    fa = backends.get("detect", "face-alignment").resolve(DetectOptions(backend="face-alignment"))
    assert (retina.conf_threshold, retina.nms_threshold) == (0.5, 0.4)  # official detect.py
    assert fa.nms_threshold == 0.3  # face_alignment's own
    given = backends.get("detect", "face-alignment").resolve(DetectOptions(nms_threshold=0.6))
    assert given.nms_threshold == 0.6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["detect", "--face-lr-size", "0"], "Invalid value for '--face-lr-size'"),
        (["detect", "--conf-threshold", "1.5"], "Invalid value for '--conf-threshold'"),
        (["detect", "--nms-threshold", "-0.1"], "Invalid value for '--nms-threshold'"),
        (["detect", "--min-score", "2"], "Invalid value for '--min-score'"),
        (["detect", "--max-center-y", "1.1"], "Invalid value for '--max-center-y'"),
        (["detect", "--upscale", "0"], "Invalid value for '--upscale'"),
        (["parse", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["parse", "--part-size", "0"], "Invalid value for '--part-size'"),
        (["parse", "--actors", "0"], "Invalid value for '--actors'"),
        (["parse", "--max-errors", "-1"], "Invalid value for '--max-errors'"),
        (["parse", "--num-cpus", "0"], "Invalid value for '--num-cpus'"),
        (["parse", "--max-pixels", "0"], "Invalid value for '--max-pixels'"),
        (["parse", "--input-size", "0"], "Invalid value for '--input-size'"),
        (["restore", "--face-quality", "101"], "Invalid value for '--face-quality'"),
        (["restore", "--face-hr-size", "0"], "Invalid value for '--face-hr-size'"),
        (["restore", "--quality", "90"], "No such option '--quality'"),
        (["preprocess", "--upscale", "-1"], "Invalid value for '--upscale'"),
    ],
)
def test_numeric_options_are_range_checked_at_the_cli(tmp_path: Path, args: list[str], message: str) -> None:
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"")
    result = CliRunner().invoke(cli.main, [*args, str(manifest), "-w", str(tmp_path / "w")])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "w").exists()


def test_the_library_checks_the_same_ranges_naming_the_flag() -> None:
    with pytest.raises(StageConfigError, match=r"^--upscale 0: must be > 0 and <= 16$"):
        DetectOptions(upscale=0)
    with pytest.raises(StageConfigError, match=r"^--face-quality 0: must be >= 1 and <= 100$"):
        RestoreOptions(face_quality=0)
    with pytest.raises(
        StageConfigError, match=r"^--parse-backend x: unknown parse backend; choose from schp"
    ):
        stage_options("parse", {"backend": "x"}, "parse-")
    with pytest.raises(StageConfigError, match="unknown options quality"):
        stage_options("restore", {"quality": 90})


def test_one_upscale_for_every_detector(monkeypatch) -> None:
    import numpy as np

    from deskpro.pipeline import detection, stages

    seen: list[tuple[int, ...]] = []

    def fake(paths, images_bgr):
        seen.extend(im.shape for im in images_bgr)
        return [[] for _ in images_bgr]

    stages.upscaled(fake, 2.5)(["a"], [np.zeros((10, 8, 3), np.uint8)])
    assert seen == [(25, 20, 3)]
    built: list[dict] = []

    class Recording:  # stands in for FaceDetector: what the retinaface backend asks of it
        def __init__(self, net, **kw):
            built.append(kw)

    monkeypatch.setattr(detection, "FaceDetector", Recording)
    backend = backends.get("detect", "retinaface-mobilenet0.25")
    opts = backend.resolve(DetectOptions(backend="retinaface-mobilenet0.25", upscale=3.0))
    backends.build_model(backend, opts, "cpu", None, nets=object())
    assert built and "upscale" not in built[0]  # the stage layer upscales, for every backend alike


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_device_this_machine_lacks_is_one_line(device: str, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=rf"^--device {device}: no CUDA GPU is visible to this process"):
        resolve_device(device)
    assert resolve_device(device, check_available=False) == device  # a cluster's workers have GPUs
    assert resolve_device("auto") == "cpu"


def test_a_bogus_device_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"^--device bogus: not a device; use auto, cpu, cuda or cuda:N$"):
        resolve_device("bogus")
    with pytest.raises(StageConfigError, match=r"^--device bogus: not a device"):
        check_stage("detect", stage_options("detect", {"backend": "retinaface-resnet50", "device": "bogus"}))


def test_cli_device_errors_are_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"")
    result = CliRunner().invoke(
        cli.main, ["restore", str(manifest), "-w", str(tmp_path / "w"), "--device", "bogus"]
    )
    assert result.exit_code == 1 and result.output.strip() == (
        "Error: --device bogus: not a device; use auto, cpu, cuda or cuda:N"
    )


class _NotATensor:
    pass


def _bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = gpen.build(256).state_dict()
    out = {}
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(1), "y": _NotATensor()}, buf)
    for name, data, reason in [
        ("code.pth", buf.getvalue(), "holds Python objects besides tensors"),
        ("pickle.pth", pickle.dumps({"a": 1}), "holds Python objects besides tensors"),
        ("text.pth", b"hello, not a checkpoint\n", "not a torch checkpoint"),
        ("empty.pth", b"", "empty file"),
    ]:
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, reason)
    torch.save(good, tmp_path / "full.pth")
    full = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(full[: len(full) // 2])
    out["half.pth"] = (tmp_path / "half.pth", "truncated or corrupt file")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    out["other.pth"] = (tmp_path / "other.pth", "expected GPEN-BFR-512")
    return out


def test_a_bad_checkpoint_is_refused_on_the_driver_naming_file_and_flag(tmp_path: Path) -> None:
    for name, (path, reason) in _bad_checkpoints(tmp_path).items():
        opts = stage_options("restore", {"backend": "gpen-512", "weights": str(path)}, "restore-")
        with pytest.raises(StageConfigError) as info:
            check_stage("restore", opts, "restore-")
        message = str(info.value)
        assert message.startswith(f"--restore-weights {path}: "), name
        assert reason in message and "\n" not in message, (name, message)
        assert "weights_only" not in message and "resume" not in message, (name, message)


def test_cli_bad_checkpoint_is_one_line_before_any_work(tmp_path: Path) -> None:
    from _pipeline_utils import make_dataset

    _, manifest = make_dataset(tmp_path)
    bad = tmp_path / "GPEN-BFR-512.pth"
    bad.write_bytes(pickle.dumps({"a": 1}))
    work = tmp_path / "w"
    args = ["restore", str(manifest), "-w", str(work), "--executor", "local", "--weights", str(bad)]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: --weights {bad}: cannot be read as a GPEN-BFR-512 checkpoint: holds Python objects "
        "besides tensors; deskpro loads checkpoints as weights only (no code)"
    )
    assert not (work / "stages" / "restore").exists()


def test_a_missing_weights_file_says_where_the_official_one_comes_from(tmp_path: Path) -> None:
    opts = stage_options("parse", {"backend": "schp", "labels": "atr", "weights": str(tmp_path / "x.pth")})
    with pytest.raises(StageConfigError) as info:
        check_stage("parse", opts)
    assert str(info.value).startswith(f"--weights {tmp_path / 'x.pth'}: file not found (backend schp)")
    assert weights.get("schp-atr").file in str(info.value) and "deskpro weights list" in str(info.value)


def test_max_pixels_is_a_fingerprinted_image_option() -> None:
    assert ParseOptions().max_pixels == DetectOptions().max_pixels == images.DEFAULT_MAX_PIXELS
    assert "max_pixels" in ParseOptions().fingerprinted()
    assert "device" not in ParseOptions().fingerprinted()
    assert "channels_last" not in RestoreOptions().fingerprinted()
