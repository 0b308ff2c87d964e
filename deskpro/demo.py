"""The demo: a synthetic cloth-changing dataset through every deskpro step, on CPU, in minutes.

Synthetic data -> manifest -> preprocess (oracle parser and detector, no restorer; local Ray, or
the in-process executor when Ray does not start) -> pack -> verify -> face teacher -> global-stream
baseline -> DeSKPro -> evaluate, printing each step and the cross-clothes results of the baseline
and of DeSKPro. Every figure printed is computed by the run; nothing is fixed in advance.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from deskpro.train.loop import TrainRunOptions


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and schedule of a demo run."""

    identities: int
    images_per_camera: int
    image_size: tuple[int, int]  # generated images (H, W)
    body_size: tuple[int, int]
    face_size: int
    p: int
    k: int
    teacher_epochs: int
    epochs: int
    warmup_epochs: int
    base_lr: float
    max_iters: int | None = None
    trials: int = 10


# Measured on 2 CPU cores: about 5 to 6.5 minutes in all (teacher ~60 img/s, baseline ~56 img/s,
# DeSKPro ~26 img/s at these sizes); 6 / 8 epochs gave a weaker cross-clothes margin.
FULL = DemoSettings(
    identities=60,
    images_per_camera=4,
    image_size=(128, 64),
    body_size=(64, 32),
    face_size=32,
    p=4,
    k=4,
    teacher_epochs=10,
    epochs=12,
    warmup_epochs=1,
    base_lr=6e-4,
)
QUICK = DemoSettings(
    identities=12,
    images_per_camera=2,
    image_size=(96, 48),
    body_size=(64, 32),
    face_size=32,
    p=2,
    k=2,
    teacher_epochs=1,
    epochs=1,
    warmup_epochs=0,
    base_lr=6e-4,
    max_iters=2,
    trials=2,
)


class _Steps:
    """Numbered, timed step messages."""

    def __init__(self, total: int, echo: Callable[[str], None]):
        self.total, self.echo, self.n = total, echo, 0
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.n += 1
        self.echo(f"[{self.n}/{self.total}] {message}  (t={time.perf_counter() - self.start:.0f}s)")


def _preprocess(manifest: Path, work: Path, settings: DemoSettings, executor: str, echo) -> str:
    """Run parse / detect / restore with the oracle backends; Ray first, then the local executor."""
    from deskpro.pipeline import runner

    backends = {
        "parse": {"backend": "oracle", "labels": "lip"},
        "detect": {"backend": "oracle", "face_lr_size": settings.face_size},
        "restore": {"backend": "none", "face_hr_size": settings.face_size},
    }
    order = ["ray", "local"] if executor == "ray" else ["local"]
    for i, name in enumerate(order):
        options = runner.StageRunOptions(
            executor=name, part_size=256, batch_size=32, progress=False, max_errors=0
        )
        try:
            runner.run_preprocess(manifest, work, backends, options)
            return name
        except Exception as exc:  # Ray can fail to start on small or locked-down machines
            if i == len(order) - 1:
                raise
            echo(
                f"      Ray failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "using the local executor"
            )
    raise AssertionError("unreachable")


def _train(shards: Path, run: Path, phase: str, settings: DemoSettings, seed: int, teacher=None) -> Path:
    from deskpro.train.loop import run_training

    if run.exists():  # a previous demo's run: start over rather than append to its log
        shutil.rmtree(run)
    epochs = settings.teacher_epochs if phase == "teacher" else settings.epochs
    overrides = {
        "epochs": epochs,
        "warmup_epochs": min(settings.warmup_epochs, epochs - 1),
        "p": settings.p,
        "k": settings.k,
        "base_lr": settings.base_lr,
        "num_workers": 0,
        "seed": seed,
    }
    options = TrainRunOptions(
        device="cpu", teacher=str(teacher) if teacher else None, max_iters=settings.max_iters, progress=False
    )
    return run_training(shards, run, phase, overrides, options)


def _last_log(run: Path) -> str:
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    return f"epoch {record['epoch']}, loss {record['total']:.3f}, {record['images_per_s']:.1f} img/s"


SHOWN = (("baseline", "body"), ("deskpro", "body"), ("deskpro", "face"), ("deskpro", "both"))


def format_results(reports: dict, protocols=("cc", "cc-single", "sc")) -> str:
    """The demo's table: model, stream, protocol, R1 / R5 / R10 / mAP in percent."""
    names = {"baseline": "baseline (global stream)", "deskpro": "DeSKPro"}
    head = f"{'model':<26} {'stream':<6} {'protocol':<10} {'R1':>6} {'R5':>6} {'R10':>6} {'mAP':>6}"
    lines = [head, "-" * len(head)]
    for protocol in protocols:
        for name, stream in SHOWN:
            for r in reports[name]["results"]:
                if r["stream"] == stream and r["protocol"] == protocol:
                    lines.append(
                        f"{names[name]:<26} {stream:<6} {protocol:<10} {100 * r['r1']:6.1f} "
                        f"{100 * r['r5']:6.1f} {100 * r['r10']:6.1f} {100 * r['mAP']:6.1f}"
                    )
    return "\n".join(lines)


def run_demo(
    out_dir,
    *,
    quick: bool = False,
    seed: int = 0,
    executor: str = "ray",
    echo: Callable[[str], None] = print,
    settings: DemoSettings | None = None,
) -> dict:
    """Run the whole demo into out_dir; returns (and writes to out_dir/results.json) the results."""
    from deskpro import synthetic
    from deskpro.manifests import build_manifest
    from deskpro.pipeline.pack import pack
    from deskpro.pipeline.shards import verify
    from deskpro.train.evaluate import evaluate

    settings = settings or (QUICK if quick else FULL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = _Steps(8, echo)
    data, manifest, work, shards = out / "data", out / "manifest.parquet", out / "work", out / "shards"

    step(
        f"synthetic dataset: {settings.identities} identities, {settings.images_per_camera} images per camera"
    )
    synthetic.prepare(
        data,
        {
            "identities": settings.identities,
            "images_per_camera": settings.images_per_camera,
            "image_size": settings.image_size,
            "seed": seed,
        },
        progress=False,
    )
    table = build_manifest("synthetic", data, manifest)
    step(f"manifest: {table.num_rows} images -> {manifest}")
    used = _preprocess(manifest, work, settings, executor, echo)
    step(f"preprocessed with the oracle parser and detector, no restorer ({used} executor)")
    pack(
        work,
        shards,
        body_size=settings.body_size,
        face_size=settings.face_size,
        overwrite=True,
        progress=False,
    )
    report = verify(shards)
    step(f"packed and verified shards -> {shards} ({'ok' if report.ok else 'FAILED'})")
    if not report.ok:
        raise RuntimeError(f"{shards}: verify failed:\n{report.format()}")

    teacher = _train(shards, out / "teacher", "teacher", settings, seed)
    step(f"face teacher trained: {_last_log(out / 'teacher')}")
    baseline = _train(shards, out / "baseline", "baseline", settings, seed)
    step(f"global-stream baseline trained: {_last_log(out / 'baseline')}")
    deskpro = _train(shards, out / "deskpro", "deskpro", settings, seed, teacher=teacher)
    step(f"DeSKPro trained: {_last_log(out / 'deskpro')}")

    reports = {
        "baseline": evaluate(
            shards,
            baseline,
            streams=("body",),
            device="cpu",
            trials=settings.trials,
            seed=seed,
            progress=False,
            json_path=out / "eval-baseline.json",
        ),
        "deskpro": evaluate(
            shards,
            deskpro,
            device="cpu",
            trials=settings.trials,
            seed=seed,
            progress=False,
            json_path=out / "eval-deskpro.json",
        ),
    }
    step("evaluated on the test split")
    echo("")
    echo(format_results(reports))
    summary = {
        "settings": asdict(settings),
        "seed": seed,
        "executor": used,
        "cc": {
            f"{name}/{r['stream']}": r
            for name, rep in reports.items()
            for r in rep["results"]
            if r["protocol"] == "cc"
        },
        "seconds": time.perf_counter() - step.start,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
