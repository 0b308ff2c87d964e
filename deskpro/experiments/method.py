"""`deskpro experiment method`: every row of Table 3 on a controlled synthetic world, over seeds.

Per seed: the clothes-trap world (`synthetic/worlds.py`) drawn with that seed, packed into shards,
every row of Table 3 trained and evaluated (`ablate.run_ablation`: the teacher, the global stream,
CSA without L_att, DeSKPro and the student alone), and the paper's Fig. 3 as numbers for rows 2 and
3 (mean attention on cloth cells and on the other body cells, test split). Then over seeds: the
mean and spread of each figure, the paired difference of each ordering the paper draws, and which
hold (`stats.py`). Written to OUT: method.json, method.md (the tables, as printed) and report.html
(tables, curves, attention and rank pictures embedded: opens with no server). Design: docs/method.md.

Sizes: `CPU` (the whole run about 20-30 minutes on an idle 2-core machine, at most 60), `GPU` (one
H100, under 10 minutes: the official OSNet x1.0 at 256x128 body crops) and `TINY` (the tests).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deskpro.experiments import method_report
from deskpro.experiments.ablate import run_ablation, schedule_settings, torch_threads
from deskpro.experiments.pictures import save_curves
from deskpro.experiments.synthetic_shards import ShardSizes, build_shards
from deskpro.experiments.visualize import attention_picture, checkpoint_attention, ranks_picture
from deskpro.paper import paper_table3
from deskpro.synthetic.worlds import world as find_world


@dataclass(frozen=True)
class MethodSize:
    """One size of the experiment: the world's sizes, the training schedule and how to run it."""

    name: str
    identities: int
    images_per_camera: int
    image_size: tuple[int, int]
    body_size: tuple[int, int]
    face_size: int
    p: int
    k: int
    teacher_epochs: int
    epochs: int
    warmup_epochs: int
    base_lr: float
    backbone: str
    seeds: tuple[int, ...] = (0, 1, 2)
    world: str = "clothes-trap"
    device: str = "cpu"
    jobs: int = 2  # runs at once, each in its own process on `threads` torch threads
    threads: int | None = 1  # fixed on a CPU: the thread count changes the sums, so results repeat
    trials: int = 10
    max_iters: int | None = None
    workers: int = 0  # loader processes of each run (0: in the run's process, as the demo)
    amp: str | None = None  # mixed precision of every run (None: the config's, fp32)


CPU = MethodSize(
    name="cpu",
    identities=60,
    images_per_camera=4,
    image_size=(128, 64),
    body_size=(64, 32),
    face_size=32,
    p=8,
    k=4,
    teacher_epochs=30,
    epochs=24,  # 264 steps of 32: four runs of a seed side by side in about 7 minutes on 2 idle cores
    warmup_epochs=2,
    base_lr=1.5e-3,  # x0.25 from scratch in a few hundred steps: the demo's lr
    backbone="osnet_x0_25",
)
# Not yet run on a GPU (none was lent): sized from the CPU figures, to be timed by
# benchmarks/method_gpu.sh on the first device. 45 training identities x 18 images at 256x128,
# 25 steps an epoch: 750 steps of each body run, two runs at once on the one GPU in bf16.
GPU = MethodSize(
    name="gpu",
    identities=90,
    images_per_camera=6,
    image_size=(256, 128),
    body_size=(256, 128),
    face_size=64,
    p=8,
    k=4,
    teacher_epochs=30,
    epochs=30,
    warmup_epochs=3,
    base_lr=6e-4,
    backbone="osnet_x1_0",
    device="cuda",
    jobs=2,
    threads=None,
    workers=4,
    amp="bf16",
)
TINY = MethodSize(
    name="tiny",
    identities=9,
    images_per_camera=2,
    image_size=(128, 64),
    body_size=(64, 32),
    face_size=32,
    p=2,
    k=2,
    teacher_epochs=1,
    epochs=1,
    warmup_epochs=0,
    base_lr=6e-4,
    backbone="osnet_x0_25",
    seeds=(0, 1),
    jobs=1,
    trials=2,
    max_iters=2,
)
SIZES = {size.name: size for size in (CPU, GPU, TINY)}

# Runs whose body stream has a CSA attention map: row 2 (CSA, no L_att) and row 3 (CSA + L_att).
ATTENTION_ROWS = {"2": "csa", "3": "deskpro"}


def paper_table3_percent() -> dict:
    """The paper's Table 3 as {row key: {r1, mAP}} in percent (Celeb-reID-light)."""
    return {key: {"r1": f.r1, "mAP": f.mAP} for key, f in paper_table3().items()}


def size_named(name: str, seeds: tuple[int, ...] | None = None) -> MethodSize:
    """The size called `name`, with `seeds` in place of its own; ValueError naming the known ones."""
    if name not in SIZES:
        raise ValueError(f"--size: unknown size {name!r}; known: {', '.join(SIZES)}")
    size = SIZES[name]
    if seeds:
        size = dataclasses.replace(size, seeds=tuple(seeds))
    return size


def run_seed(out: Path, size: MethodSize, seed: int, *, executor: str, echo, progress: bool) -> dict:
    """One seed: shards of the world drawn with `seed`, every row trained and evaluated, the attention
    figures of rows 2 and 3; the pictures of the first seed's models go to out/pictures."""

    options = find_world(size.world).generator_options(
        size.identities, size.images_per_camera, size.image_size, seed
    )
    shards, _ = build_shards(
        out, options, ShardSizes(size.body_size, size.face_size), executor=executor, echo=echo
    )
    settings = schedule_settings(size, seed, progress, device=size.device)
    with torch_threads(size.threads):
        ablation = run_ablation(
            shards,
            out / "runs",
            settings=settings,
            echo=echo,
            title=f"{size.world} world, seed {seed} (test split; percent)",
        )
        runs = {name: Path(path) for name, path in ablation["runs"].items()}
        attention = {
            key: checkpoint_attention(runs[run], shards, device=settings.device)
            for key, run in ATTENTION_ROWS.items()
        }
    return {
        "seed": seed,
        "shards": str(shards),
        "rows": {row["key"]: row["results"] for row in ablation["rows"]},
        "attention": attention,
        "runs": {name: str(path) for name, path in runs.items()},
    }


def draw_pictures(seed_result: dict, out: Path, device: str) -> dict[str, str]:
    """Attention pictures of rows 2 and 3, ranks of DeSKPro, curves of the body runs (one seed)."""
    shards, runs = Path(seed_result["shards"]), {k: Path(v) for k, v in seed_result["runs"].items()}
    drawn = {}
    for key, run in ATTENTION_ROWS.items():
        path = attention_picture(runs[run], shards, out / f"row{key}", device=device)
        drawn[f"attention, row {key} ({run} run)"] = path
    drawn["ranks, DeSKPro"] = ranks_picture(runs["deskpro"], shards, out, device=device)
    for run in ("global", "csa", "deskpro", "student", "teacher"):
        if run in runs:
            drawn[f"curves, {run} run"] = save_curves(runs[run].parent, out / f"curves-{run}.png")[0]
    return {title: str(path) for title, path in drawn.items()}


def _write(out: Path, seeds: list[dict], size: MethodSize, pictures: dict, paper, seconds: float) -> dict:
    summary = method_report.summarise(seeds, paper=paper)
    summary.update(
        size=dataclasses.asdict(size),
        world=find_world(size.world).to_dict(),
        pictures=pictures,
        seconds=seconds,
        complete=len(seeds) == len(size.seeds),
    )
    (out / "method.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "method.md").write_text(method_report.format_markdown(summary) + "\n")
    method_report.write_html(summary, out / "report.html")
    return summary


def run_method(
    out_dir,
    size: MethodSize = CPU,
    *,
    executor: str = "local",
    echo: Callable[[str], None] = print,
    progress: bool = True,
    paper: dict | None = None,
) -> dict:
    """Run every seed into out_dir/seed-S (finished runs are reused), then write method.json,
    method.md and report.html; returns the summary. `paper`: {row: {r1, mAP}} beside ours
    (default: the paper's Table 3, Celeb-reID-light)."""
    paper = paper_table3_percent() if paper is None else paper

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seeds, pictures = [], {}
    for n, seed in enumerate(size.seeds, 1):
        echo(f"== seed {seed} ({n}/{len(size.seeds)})  (t={time.perf_counter() - start:.0f}s)")
        seed_dir = out / f"seed-{seed}"
        seeds.append(run_seed(seed_dir, size, seed, executor=executor, echo=echo, progress=progress))
        if n == 1:
            pictures = draw_pictures(seeds[0], out / "pictures", size.device)
        # the files after every seed: an interrupted experiment still reports the seeds it finished
        summary = _write(out, seeds, size, pictures, paper, time.perf_counter() - start)
    text = method_report.format_markdown(summary)
    echo(text)
    echo(f"results: {out / 'method.json'}  tables: {out / 'method.md'}  report: {out / 'report.html'}")
    return summary
