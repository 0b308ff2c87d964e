"""Re-id evaluation: retrieval features from shards, the datasets' protocols and their table.

Distances are made a block of queries at a time and ranked at once (`deskpro.train.metrics`), so
memory beyond the features stays a few [block, gallery] matrices whatever the gallery size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deskpro.common.files import atomic_path, check_output_path
from deskpro.common.threads import apply_threads
from deskpro.common.torch_utils import resolve_device
from deskpro.config import preset
from deskpro.model import checkpoint
from deskpro.model.deskpro import retrieval_distance, retrieval_features
from deskpro.train.data import _where, open_reader
from deskpro.train.metrics import Gallery, RankAccumulator, query_block, rank, rank_block
from deskpro.train.protocols import Protocol, build_protocols, index_column, single_shot_columns
from deskpro.train.summary import format_table
from deskpro.train.transforms import normalize_uint8

__all__ = [
    "rank",
    "evaluate",
    "evaluate_model",
    "evaluate_features",
    "extract_features",
    "build_protocols",
    "single_shot_columns",
    "format_table",
]

# ---------------------------------------------------------------- features and protocols

STREAMS = ("body", "face", "both")
RANKS = (1, 5, 10)


@dataclass(frozen=True)
class ProtocolRow:
    """One line of the results table: a protocol, a feature stream, its metrics and counts."""

    protocol: str
    stream: str
    mode: str
    r1: float
    r5: float
    r10: float
    mAP: float
    queries: int
    gallery: int
    excluded: int
    trials: int = 1

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _cmc_at(cmc: np.ndarray, k: int) -> float:
    return float(cmc[min(k, len(cmc)) - 1]) if len(cmc) else 0.0


@torch.no_grad()
def extract_features(
    model,
    reader,
    positions: np.ndarray,
    *,
    batch_size: int = 64,
    device="cpu",
    flip: bool = True,
    progress: bool = True,
    desc: str = "features",
    faces: bool = True,
) -> dict[str, torch.Tensor]:
    """Flip-averaged, chunk-normalised features (`retrieval_features`) of reader rows, on the CPU.

    With faces=False the student is not run: face features are zero and `has_face` is all false
    (for the body stream alone).
    """

    def inputs(images: np.ndarray) -> torch.Tensor:  # the trainer's normalisation (`augment_batch`)
        return normalize_uint8(torch.from_numpy(images).to(device, non_blocking=True))

    parts: dict[str, list[torch.Tensor]] = {"body": [], "face": [], "has_face": []}
    starts = range(0, len(positions), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        arrays = reader.read_many(positions[start : start + batch_size])
        body = inputs(arrays["body"])
        face = inputs(arrays["face_lr"]) if faces else None
        has_face = torch.from_numpy(np.asarray(arrays["has_face"], dtype=bool)).to(device)
        feats = retrieval_features(model, body, face, has_face, flip=flip)
        for key in parts:
            value = feats[key].cpu()
            parts[key].append(value if key == "has_face" else value.float())
    if not parts["body"]:
        raise ValueError("extract_features: no rows to embed")
    return {key: torch.cat(value) for key, value in parts.items()}


def _rows(tensor: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """tensor[positions]: a view when the positions are a contiguous run, else a copy."""
    if positions.size and positions[-1] - positions[0] + 1 == positions.size:
        if (np.diff(positions) == 1).all():
            return tensor[int(positions[0]) : int(positions[-1]) + 1]
    return tensor[torch.from_numpy(positions)]


def _mean_cos_distance(stream: str):
    def distance(q: dict, g: dict) -> torch.Tensor:
        return 1.0 - (q[stream].flatten(1) @ g[stream].flatten(1).T) / q[stream].shape[1]

    return distance


def stream_distance_blocks(
    features: dict, q_pos: np.ndarray, g_pos: np.ndarray, stream: str, block: int | None = None
) -> tuple[np.ndarray, np.ndarray, Iterator[tuple[slice, torch.Tensor]]]:
    """(query positions used, gallery positions used, blocks of (slice of those, distances)).

    body: 1 - mean cosine over the 7 body chunks, all rows. face: the same over the face chunks, on
    the rows that have a face on both sides. both: `retrieval_distance` (face and body where both
    images have a face, body only otherwise), all rows. `features` are indexed by position; neither
    side is copied whole: each block gathers its queries, and the gallery in chunks of `block` * 8.
    """

    if stream == "face":
        has_face = features["has_face"].numpy()
        q_pos, g_pos = q_pos[has_face[q_pos]], g_pos[has_face[g_pos]]
    elif stream not in ("body", "both"):
        raise ValueError(f"unknown stream {stream!r}; expected one of {', '.join(STREAMS)}")
    distance = retrieval_distance if stream == "both" else _mean_cos_distance(stream)
    block = block or query_block(len(g_pos))
    keys = ("body", "face", "has_face") if stream == "both" else (stream,)
    g_chunk = block * 8

    def blocks():
        for start in range(0, len(q_pos), block):
            q = {k: _rows(features[k], q_pos[start : start + block]) for k in keys}
            out = None
            for g_start in range(0, len(g_pos), g_chunk):
                g = {k: _rows(features[k], g_pos[g_start : g_start + g_chunk]) for k in keys}
                part = distance(q, g)
                if out is None:
                    out = part.new_empty((part.shape[0], len(g_pos)))
                out[:, g_start : g_start + part.shape[1]] = part
            yield slice(start, start + block), out

    return q_pos, g_pos, blocks()


def _rank_protocol(blocks, q_rows, g_rows, labels, protocol, trials, seed, max_rank=50):
    """Metrics of one protocol and stream: one ranking, or the mean over single-shot trials.

    Every distance block is ranked against the full gallery, or against each trial's columns.
    """
    pid, cam, clothes = labels
    q_pid, q_cam, q_clo = pid[q_rows], cam[q_rows], clothes[q_rows]
    g_pid, g_cam, g_clo = pid[g_rows], cam[g_rows], clothes[g_rows]
    if protocol.single_shot:
        columns = [single_shot_columns(g_pid, np.random.default_rng([seed, t])) for t in range(trials)]
    else:
        columns = [None]
    galleries = [
        Gallery(
            g_pid if c is None else g_pid[c],
            g_cam if c is None else g_cam[c],
            g_clo if c is None else g_clo[c],
            mode=protocol.mode,
        )
        for c in columns
    ]
    totals = [RankAccumulator(max_rank, gal.size) for gal in galleries]
    for rows, dist in blocks:
        for cols, gal, total in zip(columns, galleries, totals):
            part = dist if cols is None else dist[:, torch.from_numpy(cols).to(dist.device)]
            total.add(rank_block(part, q_pid[rows], q_cam[rows], q_clo[rows], gal))
    results = [total.result() for total in totals]
    if not protocol.single_shot:
        r = results[0]
        return r.cmc, r.mAP, r.num_valid + r.num_excluded, len(g_rows), r.num_excluded, 1
    cmcs = []
    for r in results:  # trials' galleries may be shorter than max_rank: pad with the last value
        cmc = np.zeros(max_rank)
        cmc[: len(r.cmc)] = r.cmc
        cmc[len(r.cmc) :] = r.cmc[-1] if len(r.cmc) else 0.0
        cmcs.append(cmc)
    m_ap = float(np.mean([r.mAP for r in results]))
    gallery = int(np.mean([len(c) for c in columns]))
    excluded = int(max(r.num_excluded for r in results))
    return np.mean(cmcs, 0), m_ap, len(q_rows), gallery, excluded, trials


def evaluate_features(
    features: dict[str, torch.Tensor],
    index,
    protocols: Sequence[Protocol],
    *,
    streams: Sequence[str] = STREAMS,
    trials: int = 10,
    seed: int = 0,
    block: int | None = None,
) -> list[ProtocolRow]:
    """Metrics per protocol and stream; `features` are indexed by reader position (all rows)."""
    labels = (index_column(index, "pid"), index_column(index, "camid"), index_column(index, "clothes_id"))
    rows = []
    for protocol in protocols:
        for stream in streams:
            q_pos, g_pos, blocks = stream_distance_blocks(
                features, protocol.query, protocol.gallery, stream, block
            )
            if q_pos.size == 0 or g_pos.size == 0:
                continue
            cmc, m_ap, nq, ng, excluded, n_trials = _rank_protocol(
                blocks, q_pos, g_pos, labels, protocol, trials, seed
            )
            rows.append(
                ProtocolRow(
                    protocol.name,
                    stream,
                    protocol.mode,
                    *(_cmc_at(cmc, k) for k in RANKS),
                    m_ap,
                    nq,
                    ng,
                    excluded,
                    n_trials,
                )
            )
    return rows


def evaluate_model(
    model,
    reader,
    protocols: Sequence[str],
    *,
    split: str = "test",
    streams: Sequence[str] = STREAMS,
    device="cpu",
    batch_size: int = 64,
    flip: bool = True,
    trials: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> list[ProtocolRow]:
    """Embed the rows the protocols use (model put in eval mode) and rank them."""
    built = build_protocols(reader.index, protocols, split=split)
    if not built:
        raise ValueError(f"{_where(reader)}: no query/gallery rows for protocols {list(protocols)} ({split})")
    positions = np.unique(np.concatenate([np.concatenate([p.query, p.gallery]) for p in built]))
    was_training = model.training
    model.eval()
    try:
        feats = extract_features(
            model,
            reader,
            positions,
            batch_size=batch_size,
            device=device,
            flip=flip,
            progress=progress,
            faces=any(stream != "body" for stream in streams),
        )
    finally:
        model.train(was_training)
    # Scatter back to reader positions so that protocols index features by position.
    full = {}
    for key, value in feats.items():
        full[key] = value.new_zeros((len(reader), *value.shape[1:]))
        full[key][torch.from_numpy(positions)] = value
    return evaluate_features(full, reader.index, built, streams=streams, trials=trials, seed=seed)


def default_streams(model) -> tuple[str, ...]:
    """Streams worth reporting: body only for a checkpoint trained without faces (the baseline)."""
    meta = getattr(model, "checkpoint_meta", None) or {}
    phase = (meta.get("config") or {}).get("phase")
    return ("body",) if phase == "baseline" else STREAMS


def recipe_flip(model) -> bool:
    """Recipe hook (h-recipe): flip-averaged features unless the checkpoint was trained with
    --recipe official, whose test-time flip never runs on CUDA (see docs/differences.md)."""
    meta = getattr(model, "checkpoint_meta", None) or {}
    return (meta.get("config") or {}).get("recipe", "deskpro") != "official"


def evaluate(
    shards_dir,
    checkpoint_path,
    *,
    split: str = "test",
    streams: Sequence[str] | None = None,
    device="cpu",
    batch_size: int = 64,
    trials: int = 10,
    seed: int = 0,
    trust: bool = False,
    progress: bool = True,
    json_path=None,
    force: bool = False,
) -> dict:
    """Evaluate a checkpoint on a shard set under its dataset's protocols; returns the JSON report.

    The report holds the rows of the results table (`format_report` prints it) and is written to
    `json_path` when given: never over the checkpoint or a shard file, and over an existing file
    only when it is an earlier report or `force` is set (checked before any work is done).
    """

    if json_path is not None:
        inputs = [checkpoint_path, *(p for p in Path(shards_dir).iterdir() if p.is_file())]
        json_path = check_output_path(json_path, inputs=inputs, is_ours=is_report, force=force, flag="--json")
    device = torch.device(resolve_device(str(device)))
    apply_threads(0)  # ranking and CPU inference: the CPUs this process may use (or --threads)
    reader = open_reader(shards_dir)
    dataset = reader.meta.get("dataset")
    if not dataset:
        raise ValueError(f"{shards_dir}: catalog.json meta has no 'dataset'; cannot choose the protocols")
    model = checkpoint.load(checkpoint_path, trust=trust).to(device)
    if not hasattr(model, "nocloth_net"):
        raise ValueError(f"{checkpoint_path}: a face teacher, not a DeSKPro model (evaluate needs one)")
    streams = tuple(streams) if streams else default_streams(model)
    rows = evaluate_model(
        model,
        reader,
        preset(dataset).protocols,
        split=split,
        streams=streams,
        device=device,
        batch_size=batch_size,
        flip=recipe_flip(model),  # recipe hook (h-recipe)
        trials=trials,
        seed=seed,
        progress=progress,
    )
    report = {
        "shards": str(shards_dir),
        "checkpoint": str(checkpoint_path),
        "dataset": dataset,
        "split": split,
        "trials": trials,
        "seed": seed,
        "results": [r.to_dict() for r in rows],
    }
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return report


def is_report(path: Path) -> bool:
    """Whether `path` holds an `evaluate` report (JSON with its keys), i.e. one evaluate wrote."""
    try:
        with open(path, "rb") as f:
            head = f.read(1)
            if head != b"{":
                return False
            data = json.loads(head + f.read(1 << 24))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"checkpoint", "results", "split"} <= set(data)


def format_report(report: dict) -> str:
    """The results table of an `evaluate` report."""
    rows = [ProtocolRow(**r) for r in report["results"]]
    title = f"{report['dataset']} ({report['split']}): {report['checkpoint']}"
    return format_table(rows, title, dataset=report["dataset"])
