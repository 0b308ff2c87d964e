"""Tiny stand-ins for the inputs the documentation's examples name (tests/test_examples.py) and that
the commands' reliability tests need: made once per session, copied into each sandbox."""

from __future__ import annotations

from pathlib import Path

import torch
from _model_utils import random_state, reference_shapes
from _train_utils import write_tiny_shards
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.manifests import scan, write_manifest
from deskpro.synthetic import generator as synthetic

# Official weight files by name -> (key layout file, name in it): stand-ins with those keys.
WEIGHTS = {
    "exp-schp-201908261155-lip.pth": ("schp_keys.json", "schp_lip"),
    "Resnet50_Final.pth": ("retinaface_keys.json", "retinaface_resnet50"),
    "GPEN-BFR-512.pth": ("gpen_keys.json", "gpen_bfr_512"),
    "osnet_x1_0_imagenet.pth": ("osnet_keys.json", "osnet_x1_0_imagenet"),
    "mobilenet0.25_Final.pth": ("retinaface_keys.json", "retinaface_mobilenet0.25"),
}
# 4 people x 3 cameras at 96x32; the networks' examples get the first rows only (SCHP is 153 GFLOPs
# an image whatever its size).
SYNTH = {"identities": 4, "images_per_camera": 1, "image_size": (96, 32), "seed": 5}


def _invoke(args: list[str]):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result


def _weights_state(name: str) -> dict:
    file, key = WEIGHTS[name]
    state = random_state(reference_shapes(file, key), seed=len(name))
    if key.startswith("schp"):  # the official file: wrapped, every key prefixed module.
        return {"state_dict": {f"module.{k}": v for k, v in state.items()}, "cycle_n": 1}
    if key.startswith("retinaface"):
        return {f"module.{k}": v for k, v in state.items()}
    if key.startswith("gpen"):  # blur kernels are constants of the architecture, not weights
        from deskpro.pipeline.nets import gpen

        kernels = {k: v for k, v in gpen.build(512).state_dict().items() if k.endswith(".kernel")}
        state.update(kernels)
    return state


class StandIns:
    """The inputs the examples name, made once per session and copied into each sandbox."""

    def __init__(self, cache: Path):
        self.cache = cache

    def _once(self, name: str, make) -> Path:
        path = self.cache / name
        if not path.exists():
            make(path)
        return path

    def dataset(self) -> Path:
        return self._once("synth", lambda p: synthetic.generate(p, progress=False, **SYNTH))

    def manifest(self, out: Path, rows: int | None = None) -> None:
        table = scan("synthetic", self.dataset())
        write_manifest(table if rows is None else table.slice(0, rows), out)

    def work(self) -> Path:
        def make(path: Path) -> None:
            from deskpro.pipeline.runner import StageRunOptions, run_preprocess

            manifest = self.cache / "work.parquet"
            self.manifest(manifest)
            backends = {
                "parse": {"backend": "oracle"},
                "detect": {"backend": "oracle", "min_score": 0.0, "min_size": 0.0, "max_center_y": 1.0},
                "restore": {"backend": "oracle"},
            }
            run_preprocess(manifest, path, backends, StageRunOptions(executor="local", progress=False))

        return self._once("work", make)

    def photos(self) -> Path:
        """A folder of raw JPEGs (the synthetic set's test images) and `query.jpg`, one of them."""

        def make(path: Path) -> None:
            images = sorted((self.dataset() / "rgb" / "test").rglob("*.jpg"))[:6]
            path.mkdir(parents=True)
            for i, image in enumerate(images):
                (path / f"person{i}.jpg").write_bytes(image.read_bytes())
            (path / "query.jpg").write_bytes(images[0].read_bytes())

        return self._once("photos", make)

    def features(self) -> Path:
        """A features table of `photos()` by the DeSKPro stand-in run, as `deskpro embed` writes it."""

        def make(path: Path) -> None:
            weights = self.weights("mobilenet0.25_Final.pth")
            checkpoint = self.run("deskpro") / "checkpoint.pt"
            detector = ("--detector", "retinaface-mobilenet0.25", "--detect-weights", weights)
            _invoke(["embed", self.photos(), "--checkpoint", checkpoint, "-o", path, *detector])

        return self._once("features.parquet", make)

    def shards(self) -> Path:
        return self._once(
            "shards", lambda p: write_tiny_shards(p, train_ids=8, per_id=4, test_ids=3, face_size=32)
        )

    def weights(self, name: str) -> Path:
        return self._once(
            f"weights/{name}", lambda p: (p.parent.mkdir(exist_ok=True), torch.save(_weights_state(name), p))
        )

    def run(self, kind: str) -> Path:
        """ "teacher": a teacher run (the default OSNet x1.0 widths, as the examples' own teacher)
        stopped after one iteration of two epochs (resumable); "teacher-narrow": the same at the
        x0.25 widths (--preset cpu's); "deskpro": a DeSKPro run of the narrow
        widths stopped the same way (checkpoint, config.json, a log line), from "teacher-narrow"."""
        quick = ("--p", "2", "--k", "2", "--workers", "0", "--no-progress")

        def teacher(path: Path, *extra: str) -> None:
            epochs = ("--epochs", "2", "--warmup-epochs", "0", "--max-iters", "1")
            _invoke(["train-teacher", self.shards(), "-o", path, *epochs, *quick, *extra])

        def deskpro(path: Path) -> None:
            narrow = self.run("teacher-narrow") / "checkpoint.pt"
            # one iteration of two epochs: a checkpoint, config.json and a (partial) log line, at an
            # eighth of an epoch's cost; `train -o runs/deskpro --resume` then trains on from there
            epoch = ("--epochs", "2", "--warmup-epochs", "0", "--max-iters", "1", "--backbone", "osnet_x0_25")
            _invoke(["train", self.shards(), "-o", path, "--teacher", narrow, *epoch, *quick])

        makers = {
            "teacher": teacher,
            "teacher-narrow": lambda path: teacher(path, "--backbone", "osnet_x0_25"),
            "deskpro": deskpro,
        }
        return self._once(f"run-{kind}", makers[kind])
