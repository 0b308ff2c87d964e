"""Re-id evaluation: CMC / mAP ranking, retrieval features from shards, and the datasets' protocols.

Ties are broken deterministically: gallery items at equal distance keep their gallery order (a
stable sort), so the item listed first in the gallery ranks first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deskpro.train.data import _where, open_reader

MODES = ("standard", "cc", "sc")


@dataclass(frozen=True)
class RankResult:
    """CMC curve and mAP over the valid queries; queries without a true match are counted apart."""

    cmc: np.ndarray
    mAP: float
    num_valid: int
    num_excluded: int


def _as_1d(name: str, values, length: int) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.shape[0] != length:
        raise ValueError(f"rank: {name} has {array.shape[0]} entries, the distance matrix needs {length}")
    return array


def _junk_mask(mode, same_pid, same_cam, same_clothes) -> np.ndarray:
    """Gallery items a query must not see (removed from its ranking, neither hit nor miss)."""
    junk = same_pid & same_cam
    if mode == "cc":
        junk |= same_pid & same_clothes
    elif mode == "sc":
        junk |= same_pid & ~same_clothes
    return junk


def _rank_chunk(dist, q_pids, g_pids, q_cams, g_cams, q_clothes, g_clothes, mode, max_rank):
    """CMC hits [n, max_rank], APs [n] and a validity mask [n] for a block of queries."""
    order = np.argsort(dist, axis=1, kind="stable")
    same_pid = g_pids[order] == q_pids[:, None]
    same_cam = g_cams[order] == q_cams[:, None]
    same_clothes = None if q_clothes is None else g_clothes[order] == q_clothes[:, None]
    keep = ~_junk_mask(mode, same_pid, same_cam, same_clothes)
    hits = same_pid & keep
    kept_position = np.cumsum(keep, axis=1)  # 1-based rank among kept items
    num_hits = hits.sum(axis=1)
    valid = num_hits > 0
    # First hit's rank among kept items; a large sentinel where there is none.
    first = np.where(hits, kept_position, np.iinfo(np.int64).max).min(axis=1)
    cmc = first[:, None] <= np.arange(1, max_rank + 1)[None, :]
    precision = np.cumsum(hits, axis=1) / np.maximum(kept_position, 1)
    ap = (precision * hits).sum(axis=1) / np.maximum(num_hits, 1)
    return cmc, ap, valid


def rank_result(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    q_clothes=None,
    g_clothes=None,
    mode: str = "standard",
    max_rank: int = 50,
    chunk: int = 512,
) -> RankResult:
    """CMC and mAP with the count of excluded queries; see `rank` for the rules."""
    if mode not in MODES:
        raise ValueError(f"rank: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    dist = np.asarray(distmat, dtype=np.float64)
    if dist.ndim != 2:
        raise ValueError(f"rank: distance matrix must be 2-D, got shape {dist.shape}")
    nq, ng = dist.shape
    q_pids, q_camids = _as_1d("q_pids", q_pids, nq), _as_1d("q_camids", q_camids, nq)
    g_pids, g_camids = _as_1d("g_pids", g_pids, ng), _as_1d("g_camids", g_camids, ng)
    if mode != "standard":
        if q_clothes is None or g_clothes is None:
            raise ValueError(f"rank: mode {mode!r} needs q_clothes and g_clothes")
        q_clothes, g_clothes = _as_1d("q_clothes", q_clothes, nq), _as_1d("g_clothes", g_clothes, ng)
    else:
        q_clothes = g_clothes = None
    max_rank = max(1, min(max_rank, ng))
    cmcs, aps, valids = [], [], []
    for start in range(0, nq, chunk):
        stop = start + chunk
        qc = None if q_clothes is None else q_clothes[start:stop]
        cmc, ap, valid = _rank_chunk(
            dist[start:stop],
            q_pids[start:stop],
            g_pids,
            q_camids[start:stop],
            g_camids,
            qc,
            g_clothes,
            mode,
            max_rank,
        )
        cmcs.append(cmc[valid])
        aps.append(ap[valid])
        valids.append(valid)
    valid = np.concatenate(valids) if valids else np.zeros(0, bool)
    num_valid = int(valid.sum())
    if num_valid == 0:
        return RankResult(np.zeros(max_rank), 0.0, 0, int(nq))
    cmc = np.concatenate(cmcs).mean(axis=0)
    return RankResult(cmc, float(np.concatenate(aps).mean()), num_valid, int(nq - num_valid))


def rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    q_clothes=None,
    g_clothes=None,
    mode: str = "standard",
    max_rank: int = 50,
    return_excluded: bool = False,
):
    """CMC curve (`cmc[k]` = rank-(k+1) accuracy) and mAP over queries, vectorised.

    Modes decide which gallery items a query ignores: "standard" drops items with the same pid
    and camera; "cc" (cloth-changing) also drops items with the same pid and clothes; "sc"
    (same-clothes) also drops items with the same pid and other clothes, so only same-clothes
    true matches count. A query left with no true match is excluded from the averages; with
    `return_excluded=True` the result is `(cmc, mAP, num_excluded)`. Ties keep gallery order.
    """
    result = rank_result(distmat, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode, max_rank)
    if return_excluded:
        return result.cmc, result.mAP, result.num_excluded
    return result.cmc, result.mAP


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
    from deskpro.model.deskpro import retrieval_features
    from deskpro.train.augment import normalize_uint8

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


def stream_distances(
    query: dict, gallery: dict, streams: Sequence[str] = STREAMS
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per stream asked for: (distance [q,g], query rows used, gallery rows used).

    body: 1 - mean cosine over the 7 body chunks, all rows. face: the same over the face chunks, on
    the rows that have a face on both sides. both: `retrieval_distance` (face and body where both
    images have a face, body only otherwise), all rows.
    """
    from deskpro.model.deskpro import retrieval_distance

    def mean_cos_distance(q: torch.Tensor, g: torch.Tensor) -> np.ndarray:
        return (1.0 - (q.flatten(1) @ g.flatten(1).T) / q.shape[1]).numpy()

    def all_rows(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return dist, np.arange(dist.shape[0]), np.arange(dist.shape[1])

    def face() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q_face = np.flatnonzero(query["has_face"].numpy())
        g_face = np.flatnonzero(gallery["has_face"].numpy())
        return mean_cos_distance(query["face"][q_face], gallery["face"][g_face]), q_face, g_face

    compute = {
        "body": lambda: all_rows(mean_cos_distance(query["body"], gallery["body"])),
        "face": face,
        "both": lambda: all_rows(retrieval_distance(query, gallery).numpy()),
    }
    return {stream: compute[stream]() for stream in streams}


@dataclass(frozen=True)
class Protocol:
    """Which rows are queries and gallery, and the ranking mode, for one named protocol."""

    name: str
    query: np.ndarray  # reader positions
    gallery: np.ndarray
    mode: str
    single_shot: bool = False


def _column(index, name: str) -> np.ndarray:
    values = index.column(name)
    return np.asarray(values.to_pylist(), dtype=object) if values.type == "string" else values.to_numpy()


def build_protocols(index, protocols: Sequence[str], *, split: str = "test") -> list[Protocol]:
    """Protocols over an index table. split "test": query/gallery rows; "val": PRCC's val rows.

    "standard": split query vs split gallery. "cc" / "sc" (PRCC layout): subset query_diff /
    query_same vs subset gallery on the full gallery, plus the single-shot variant; they rank in
    "cc" / "sc" mode when every row has a clothes id, else in standard mode (camera C differs in
    clothes by construction).
    """
    splits, subsets = _column(index, "split"), _column(index, "subset")
    rows = splits == "val" if split == "val" else np.isin(splits, ["query", "gallery", "test"])
    clothes_known = bool((_column(index, "clothes_id")[rows] >= 0).all()) if rows.any() else False
    out = []
    for name in protocols:
        if name == "standard":
            query = np.flatnonzero(rows & (splits == "query"))
            gallery = np.flatnonzero(rows & (splits == "gallery"))
            out.append(Protocol(name, query, gallery, "standard"))
            continue
        if name not in ("cc", "sc"):
            raise ValueError(f"unknown protocol {name!r}; expected standard, cc or sc")
        query_subset = "query_diff" if name == "cc" else "query_same"
        query = np.flatnonzero(rows & (subsets == query_subset))
        gallery = np.flatnonzero(rows & (subsets == "gallery"))
        mode = name if clothes_known else "standard"
        out.append(Protocol(name, query, gallery, mode))
        out.append(Protocol(f"{name}-single", query, gallery, mode, single_shot=True))
    return [p for p in out if p.query.size and p.gallery.size]


def single_shot_columns(g_pids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random gallery column per identity (sorted column numbers)."""
    order = rng.permutation(g_pids.size)
    _, first = np.unique(g_pids[order], return_index=True)
    return np.sort(order[first])


def _rank_protocol(dist, q_rows, g_rows, labels, protocol, trials, seed, max_rank=50):
    """Metrics of one protocol and stream: one ranking, or the mean over single-shot trials."""
    pid, cam, clothes = labels
    q_pid, g_pid, q_cam, g_cam = pid[q_rows], pid[g_rows], cam[q_rows], cam[g_rows]
    q_clo, g_clo = clothes[q_rows], clothes[g_rows]
    if not protocol.single_shot:
        r = rank_result(dist, q_pid, g_pid, q_cam, g_cam, q_clo, g_clo, mode=protocol.mode, max_rank=max_rank)
        return r.cmc, r.mAP, r.num_valid + r.num_excluded, len(g_rows), r.num_excluded, 1
    cmcs, maps, excluded, gallery = [], [], [], []
    for trial in range(trials):
        cols = single_shot_columns(g_pid, np.random.default_rng([seed, trial]))
        r = rank_result(
            dist[:, cols],
            q_pid,
            g_pid[cols],
            q_cam,
            g_cam[cols],
            q_clo,
            g_clo[cols],
            mode=protocol.mode,
            max_rank=max_rank,
        )
        cmc = np.zeros(max_rank)
        cmc[: len(r.cmc)] = r.cmc
        cmc[len(r.cmc) :] = r.cmc[-1] if len(r.cmc) else 0.0
        cmcs.append(cmc)
        maps.append(r.mAP)
        excluded.append(r.num_excluded)
        gallery.append(len(cols))
    m_ap = float(np.mean(maps))
    return np.mean(cmcs, 0), m_ap, len(q_rows), int(np.mean(gallery)), int(max(excluded)), trials


def evaluate_features(
    features: dict[str, torch.Tensor],
    index,
    protocols: Sequence[Protocol],
    *,
    streams: Sequence[str] = STREAMS,
    trials: int = 10,
    seed: int = 0,
) -> list[ProtocolRow]:
    """Metrics per protocol and stream; `features` are indexed by reader position (all rows)."""
    labels = (_column(index, "pid"), _column(index, "camid"), _column(index, "clothes_id"))
    rows = []
    for protocol in protocols:
        query = {k: v[protocol.query] for k, v in features.items()}
        gallery = {k: v[protocol.gallery] for k, v in features.items()}
        per_stream = stream_distances(query, gallery, streams)
        for stream in streams:
            dist, q_sel, g_sel = per_stream[stream]
            if q_sel.size == 0 or g_sel.size == 0:
                continue
            cmc, m_ap, nq, ng, excluded, n_trials = _rank_protocol(
                dist, protocol.query[q_sel], protocol.gallery[g_sel], labels, protocol, trials, seed
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


def format_table(rows: Sequence[ProtocolRow], title: str | None = None) -> str:
    """A fixed-width table: protocol, stream, R1, R5, R10, mAP (percent), queries, gallery, excluded."""
    head = f"{'protocol':<12} {'stream':<6} {'R1':>6} {'R5':>6} {'R10':>6} {'mAP':>6} {'queries':>8} "
    head += f"{'gallery':>8} {'excl.':>6}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.protocol:<12} {r.stream:<6} {100 * r.r1:6.1f} {100 * r.r5:6.1f} {100 * r.r10:6.1f} "
            f"{100 * r.mAP:6.1f} {r.queries:8d} {r.gallery:8d} {r.excluded:6d}"
        )
    return "\n".join(lines)


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
) -> dict:
    """Evaluate a checkpoint on a shard set under its dataset's protocols; returns the JSON report.

    The report holds the rows of the results table (`format_report` prints it) and is written to
    `json_path` when given.
    """
    from deskpro.common.torch_utils import resolve_device
    from deskpro.config import preset
    from deskpro.model import checkpoint

    device = torch.device(resolve_device(str(device)))
    reader = open_reader(shards_dir)
    dataset = reader.meta.get("dataset")
    if not dataset:
        raise ValueError(f"{shards_dir}: manifest.json meta has no 'dataset'; cannot choose the protocols")
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
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    """The results table of an `evaluate` report."""
    rows = [ProtocolRow(**r) for r in report["results"]]
    title = f"{report['dataset']} ({report['split']}): {report['checkpoint']}"
    return format_table(rows, title)
