"""The demo: a synthetic cloth-changing dataset through every deskpro step, on CPU, in minutes.

Synthetic data -> manifest -> preprocess (the oracle parser, detector and restorer, which serve the
generator's ground truth; the restorer's is a clean high-resolution render of the face; local Ray, or
the in-process executor when Ray does not start) -> pack -> verify -> a reduced Table 3 (`deskpro
ablate` rows 1, 3, 4, 5, 6, 7, DeSKPro, DeSKPro*: four training runs) -> the paper's orderings on
cross-clothes -> attention and rank pictures of the DeSKPro model. Every figure printed is computed
by the run; nothing is fixed in advance.

The runs train two at a time, each in its own process on one torch thread (`jobs`, `threads`):
the x0.25 networks are small, so a second thread in one process gains little while a second run
beside it nearly doubles the work done, and one-thread processes do not slow down when other work
shares the cores (OpenMP threads then wait on each other).

The same seed gives the same table: every random draw is seeded, the training runs start over on
each demo, and every process computes on a fixed number of threads. The thread count changes the
order of floating-point reductions (three training steps on 1 and on 2 threads give different
weights; two runs on one count give identical ones), so a count left to the environment
(OMP_NUM_THREADS, the machine's cores) would let two demos of one seed disagree.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from deskpro.experiments.ablate import AblationSettings, run_ablation, schedule_settings, torch_threads
from deskpro.experiments.pictures import save_curves
from deskpro.experiments.rows import ROWS
from deskpro.experiments.synthetic_shards import ShardSizes, build_shards
from deskpro.experiments.table import format_markdown
from deskpro.experiments.visualize import (
    attention_caption,
    attention_picture,
    checkpoint_attention,
    ranks_picture,
)
from deskpro.synthetic.worlds import TOUR

DEMO_ROWS = ("1", "3", "4", "5", "6", "7", "DeSKPro", "DeSKPro*")
# The paper's orderings that the demo checks on cross-clothes: (better row, worse row).
ORDERINGS = (("3", "1"), ("5", "4"), ("DeSKPro", "3"), ("DeSKPro", "5"))


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
    backbone: str = "osnet_x0_25"  # the narrow OSNet: about 3x the images/s of x1.0 on 2 CPU cores
    max_iters: int | None = None
    trials: int = 10
    threads: int = 1  # torch CPU threads of every process: fixed, so that results repeat
    jobs: int = 2  # training runs at once, each in its own process on `threads` threads


FULL = DemoSettings(
    identities=60,
    images_per_camera=4,
    image_size=(128, 64),
    body_size=(64, 32),
    face_size=32,
    p=8,
    k=4,
    teacher_epochs=30,  # a strong teacher is what distillation passes on; it is the cheapest run
    epochs=20,
    warmup_epochs=2,
    base_lr=1.5e-3,  # x0.25 from scratch, 220 steps: a higher lr than the preset's 6e-4
)
QUICK = DemoSettings(
    identities=12,
    images_per_camera=2,
    image_size=(128, 64),  # smaller images put most faces under the detector's 8-pixel minimum
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


def ablation_settings(settings: DemoSettings, seed: int, progress: bool) -> AblationSettings:
    return schedule_settings(settings, seed, progress)


def check_orderings(rows: list[dict], protocol: str = "cc") -> list[dict]:
    """The paper's orderings on `protocol`: for each (better, worse) pair, whether R1 and mAP hold."""
    by_key = {row["key"]: row["results"].get(protocol) for row in rows}
    out = []
    for better, worse in ORDERINGS:
        a, b = by_key.get(better), by_key.get(worse)
        if a is None or b is None:
            continue
        out.append(
            {
                "better": better,
                "worse": worse,
                "r1": [a["r1"], b["r1"]],
                "mAP": [a["mAP"], b["mAP"]],
                "r1_holds": a["r1"] > b["r1"],
                "mAP_holds": a["mAP"] > b["mAP"],
            }
        )
    return out


def format_orderings(checks: list[dict]) -> str:
    def name(key: str) -> str:
        return key if not key[0].isdigit() else f"row {key}"

    lines = ["The paper's orderings on cross-clothes (ours):"]
    for c in checks:
        verdict = {(True, True): "holds", (False, False): "does NOT hold"}.get(
            (c["r1_holds"], c["mAP_holds"]), "holds on " + ("R1" if c["r1_holds"] else "mAP") + " only"
        )
        r1, m = (100 * v for v in c["r1"]), (100 * v for v in c["mAP"])
        lines.append(
            f"  {name(c['better'])} > {name(c['worse'])}: R1 {next(r1):.1f} vs {next(r1):.1f}, "
            f"mAP {next(m):.1f} vs {next(m):.1f}: {verdict}"
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
    progress: bool = True,
) -> dict:
    """Run the whole demo into out_dir; returns (and writes to out_dir/results.json) the results."""

    settings = settings or (QUICK if quick else FULL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = _Steps(7, echo)
    options = TOUR.generator_options(
        settings.identities, settings.images_per_camera, settings.image_size, seed
    )
    sizes = ShardSizes(body_size=settings.body_size, face_size=settings.face_size)
    shards, used = build_shards(out, options, sizes, executor=executor, echo=echo, step=step)

    with _torch_threads(settings.threads):
        return _train_and_report(out, shards, settings, seed, used, progress, echo, step)


_torch_threads = torch_threads  # the name the tests know


def _train_and_report(out: Path, shards: Path, settings, seed, used, progress, echo, step) -> dict:

    runs = out / "runs"
    if runs.exists():  # a previous demo's runs: start over, so that the table is this run's
        shutil.rmtree(runs)
    step("reduced Table 3: teacher, global stream, face student alone and DeSKPro runs")
    ablation = run_ablation(
        shards,
        runs,
        rows=DEMO_ROWS,
        settings=ablation_settings(settings, seed, progress),
        echo=echo,
        title=f"Synthetic cloth-changing set, seed {seed} (test split; percent)",
    )
    checks = check_orderings(ablation["rows"])
    echo(format_orderings(checks))
    step("evaluated on the test split")
    deskpro = Path(ablation["runs"]["deskpro"])
    attention = checkpoint_attention(deskpro, shards)
    echo(attention_caption(attention))
    pictures = {
        "attention": str(attention_picture(deskpro, shards, out / "pictures")),
        "ranks": str(ranks_picture(deskpro, shards, out / "pictures")),
        "curves": str(save_curves(deskpro.parent, out / "pictures" / "curves.png")[0]),
    }
    step(f"pictures of the DeSKPro model: {', '.join(pictures.values())}")
    summary = {
        "settings": asdict(settings),
        "seed": seed,
        "executor": used,
        "rows": {row["key"]: row["results"] for row in ablation["rows"]},
        "orderings": checks,
        "attention": attention,
        "pictures": pictures,
        "seconds": time.perf_counter() - step.start,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / TABLE_NAME).write_text(demo_markdown(summary) + "\n")
    echo(f"table: {out / TABLE_NAME}  results: {out / 'results.json'}")
    return summary


TABLE_NAME = "table.md"  # what docs/demo.md and the README paste (tests compare them)


def demo_markdown(summary: dict) -> str:
    """The demo's results as Markdown from results.json alone: the reduced Table 3 with the paper's
    column, the orderings, and where the DeSKPro body stream's attention falls."""
    by_key = {row.key: row for row in ROWS}
    rows = [
        {"key": key, "method": by_key[key].method, "components": by_key[key].components, "results": results}
        for key, results in summary["rows"].items()
    ]
    title = f"deskpro demo, seed {summary['seed']}: synthetic tour world, test split, percent"
    parts = [format_markdown(rows, title), ""]
    parts += ["- " + line.strip() for line in format_orderings(summary["orderings"]).splitlines()[1:]]
    parts += ["", "DeSKPro's body stream, " + attention_caption(summary["attention"]) + "."]
    return "\n".join(parts)
