"""A synthetic world to verified shards: generate -> manifest -> oracle preprocess -> pack -> verify.

The data steps the demo and the method experiment share. The oracle parser, detector and restorer
serve the generator's ground truth (the restorer's is a clean high-resolution render of the face);
preprocessing runs on a local Ray, or in-process when Ray does not start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deskpro import synthetic
from deskpro.manifests import build_manifest
from deskpro.pipeline import runner
from deskpro.shards import verify
from deskpro.shards.pack import pack


@dataclass(frozen=True)
class ShardSizes:
    """Sizes of the packed crops (generated images are the generator options')."""

    body_size: tuple[int, int]
    face_size: int


def preprocess(manifest: Path, work: Path, face_size: int, executor: str, echo) -> str:
    """Run parse / detect / restore with the oracle backends; Ray first, then the local executor.
    Returns the executor used."""

    backends = {
        "parse": {"backend": "oracle", "labels": "lip"},
        "detect": {"backend": "oracle", "face_lr_size": face_size},
        "restore": {"backend": "oracle", "face_hr_size": face_size},
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


def build_shards(
    out: Path,
    generator_options: dict,
    sizes: ShardSizes,
    *,
    executor: str = "local",
    echo: Callable[[str], None] = print,
    step: Callable[[str], None] | None = None,
) -> tuple[Path, str]:
    """Generate the set under out/data and pack verified shards into out/shards; (shards, executor).
    `step` (default: echo) reports each finished step."""

    step = step or echo
    out.mkdir(parents=True, exist_ok=True)
    data, manifest, work, shards = out / "data", out / "manifest.parquet", out / "work", out / "shards"
    step(
        f"synthetic dataset: {generator_options['identities']} identities, "
        f"{generator_options['images_per_camera']} images per camera"
    )
    synthetic.prepare(data, generator_options, progress=False)
    table = build_manifest("synthetic", data, manifest)
    step(f"manifest: {table.num_rows} images -> {manifest}")
    used = preprocess(manifest, work, sizes.face_size, executor, echo)
    step(f"preprocessed with the oracle parser, detector and restorer ({used} executor)")
    pack(
        work,
        shards,
        body_size=sizes.body_size,
        face_size=sizes.face_size,
        codec="raw",  # raw shards: no JPEG loss on the small crops, and the published runs used them
        overwrite=True,
        progress=False,
    )
    report = verify(shards)
    step(f"packed and verified shards -> {shards} ({'ok' if report.ok else 'FAILED'})")
    if not report.ok:
        raise RuntimeError(f"{shards}: verify failed:\n{report.format()}")
    return shards, used
