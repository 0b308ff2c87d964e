"""`deskpro search`: the k nearest gallery rows of each query, exactly, with the evaluation's distance.

The distance is `retrieval_distance` (deskpro.model.deskpro), the one `deskpro evaluate` ranks by:
1 - the mean cosine over the 7 face and 7 body chunks where both images have a face, over the 7
body chunks alone where either has none. The gallery (a FEATURES table) is read a chunk of rows at
a time and each query keeps its best k so far, so memory is flat in the gallery size: queries x k,
one gallery chunk and one block of distances. Ties keep gallery order (a stable merge), so the
result is that of a full stable argsort of the whole distance matrix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deskpro.common.files import atomic_path, check_output_path
from deskpro.inference.features import FeaturesError, arrays_of, iter_chunks, read_info
from deskpro.model.deskpro import retrieval_distance
from deskpro.train.metrics import query_block

GALLERY_CHUNK = 4096  # gallery rows read at once: 4096 x 2 x 3584 float32 = 117 MB


@dataclass
class Queries:
    """Query features: body / face [Q, 7, D], has_face [Q], and a name and path for each."""

    body: np.ndarray
    face: np.ndarray
    has_face: np.ndarray
    names: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class SearchResult:
    """Gallery rows [Q, k] (-1 where the gallery has fewer usable rows) and their distances."""

    rows: np.ndarray
    distances: np.ndarray


def top_k(
    queries: Queries, gallery_path: str | os.PathLike, k: int, chunk: int = GALLERY_CHUNK
) -> SearchResult:
    """The k nearest usable gallery rows of every query (error rows are skipped), exact and stable."""
    if k < 1:
        raise ValueError(f"-k {k}: must be >= 1")
    q = {
        "body": torch.from_numpy(np.array(queries.body, np.float32)),
        "face": torch.from_numpy(np.nan_to_num(np.array(queries.face, np.float32))),
        "has_face": torch.from_numpy(np.asarray(queries.has_face, bool)),
    }
    nq = len(queries)
    best_d = torch.full((nq, 0), float("inf"))
    best_i = torch.zeros((nq, 0), dtype=torch.int64)
    for start, g in iter_chunks(gallery_path, chunk):
        usable = np.flatnonzero(g["ok"])
        if usable.size == 0:
            continue
        gal = {
            "body": torch.from_numpy(g["body"][usable]),
            "face": torch.from_numpy(g["face"][usable]),
            "has_face": torch.from_numpy(g["has_face"][usable]),
        }
        index = torch.from_numpy(usable + start)
        block = query_block(len(usable))
        new_d, new_i = [], []
        for q0 in range(0, nq, block):
            part = {key: value[q0 : q0 + block] for key, value in q.items()}
            dist = retrieval_distance(part, gal)
            # previous best first: earlier gallery rows, so a stable sort keeps gallery order on ties
            d = torch.cat([best_d[q0 : q0 + block], dist], dim=1)
            i = torch.cat([best_i[q0 : q0 + block], index.expand(dist.shape[0], -1)], dim=1)
            order = torch.sort(d, dim=1, stable=True).indices[:, :k]
            new_d.append(torch.gather(d, 1, order))
            new_i.append(torch.gather(i, 1, order))
        best_d, best_i = torch.cat(new_d), torch.cat(new_i)
    rows = np.full((nq, k), -1, np.int64)
    distances = np.full((nq, k), np.nan, np.float32)
    rows[:, : best_i.shape[1]] = best_i.numpy()
    distances[:, : best_d.shape[1]] = best_d.numpy()
    return SearchResult(rows, distances)


def queries_from_table(path: str | os.PathLike, ids: list[str] | None = None) -> Queries:
    """Rows of a features table as queries: all usable rows, or those with the given sample ids."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    arrays = arrays_of(table)
    if ids is None:
        keep = np.flatnonzero(arrays["ok"])
    else:
        where = {s: i for i, s in enumerate(arrays["sample_id"])}
        missing = [s for s in ids if s not in where]
        if missing:
            raise FeaturesError(f"{path}: no row with sample id {missing[0]!r}")
        keep = np.asarray([where[s] for s in ids], np.int64)
        bad = [arrays["sample_id"][i] for i in keep if not arrays["ok"][i]]
        if bad:
            raise FeaturesError(f"{path}: row {bad[0]!r} is an error row (no features)")
    return Queries(
        arrays["body"][keep],
        arrays["face"][keep],
        arrays["has_face"][keep],
        [str(s) for s in arrays["sample_id"][keep]],
        [str(p) for p in arrays["path"][keep]],
    )


def check_same_model(gallery: str | os.PathLike, other: str | os.PathLike) -> None:
    """Refuse to compare features of two different checkpoints (their fingerprints differ)."""
    a, b = read_info(gallery), read_info(other)
    if a.get("checkpoint_sha256") != b.get("checkpoint_sha256"):
        raise FeaturesError(
            f"{other}: made with another checkpoint than {gallery} (sha256 "
            f"{str(b.get('checkpoint_sha256'))[:12]} vs {str(a.get('checkpoint_sha256'))[:12]}); "
            "embed both with one checkpoint"
        )


def gallery_rows(gallery: str | os.PathLike, rows: np.ndarray) -> dict[int, dict]:
    """sample_id, path and has_face of the given gallery rows (read a chunk at a time)."""
    wanted = set(int(r) for r in rows.ravel() if r >= 0)
    found: dict[int, dict] = {}
    for start, g in iter_chunks(gallery, GALLERY_CHUNK):
        for r in [r for r in wanted if start <= r < start + len(g["sample_id"])]:
            j = r - start
            found[r] = {
                "sample_id": str(g["sample_id"][j]),
                "path": str(g["path"][j]),
                "has_face": bool(g["has_face"][j]),
            }
    return found


def report(queries: Queries, result: SearchResult, gallery: str | os.PathLike) -> dict:
    """The ranked results as JSON-ready data."""
    info = read_info(gallery)
    rows = gallery_rows(gallery, result.rows)
    out = []
    for q in range(len(queries)):
        ranked = [
            {"rank": r + 1, **rows[int(row)], "distance": float(result.distances[q, r])}
            for r, row in enumerate(result.rows[q])
            if row >= 0
        ]
        out.append(
            {
                "query": queries.names[q],
                "path": queries.paths[q],
                "has_face": bool(queries.has_face[q]),
                "results": ranked,
            }
        )
    return {
        "gallery": str(gallery),
        "root": info.get("root"),
        "checkpoint_sha256": info.get("checkpoint_sha256"),
        "queries": out,
    }


def format_report(data: dict) -> str:
    """One block per query: rank, distance, face used, sample id."""
    lines = []
    for q in data["queries"]:
        lines.append(f"query {q['query']} ({'face' if q['has_face'] else 'no face'})")
        lines.append(f"  {'rank':>4} {'distance':>9} {'face':>4}  sample_id")
        for r in q["results"]:
            both = "yes" if (q["has_face"] and r["has_face"]) else "no"
            lines.append(f"  {r['rank']:>4} {r['distance']:9.4f} {both:>4}  {r['sample_id']}")
    return "\n".join(lines)


def write_json(data: dict, path: str | os.PathLike, inputs: list, force: bool = False) -> Path:
    path = check_output_path(path, inputs=inputs, is_ours=_is_search_json, force=force, flag="--json")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return path


def _is_search_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"gallery", "queries"} <= set(data)
