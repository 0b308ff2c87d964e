"""Re-id ranking metrics: CMC and mAP, without sorting the gallery indices of every query.

A query's ranking only matters at its *candidates*: the gallery items with its pid (each one is a
true match or junk; every junk rule needs the same pid). Their place among all gallery items comes
from the row's sorted distances (a value sort, several times faster than an argsort) and a binary
search; junk candidates ranked above a match are subtracted from its place. The answers are those
of a full stable argsort: items at equal distance keep their gallery order (the item listed first
ranks first).

Queries go in blocks of about 4 M distances (`query_block`), so memory stays a few such blocks
whatever the number of queries and the gallery size; the matrix is read in its own dtype
(float32 stays float32). A torch tensor is ranked on its own device (a GPU when it lives there);
the per-candidate work is small and stays in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("standard", "cc", "sc", "any-camera")
CLOTHES_MODES = ("cc", "sc")  # the modes that read clothes ids


@dataclass(frozen=True)
class RankResult:
    """CMC curve (`cmc[k]` = rank-(k+1) accuracy) and mAP over the valid queries.

    Queries with no true match left after the junk rules are excluded from the averages and
    counted in `num_excluded`.
    """

    cmc: np.ndarray
    mAP: float
    num_valid: int
    num_excluded: int


@dataclass(frozen=True)
class QueryScores:
    """Per query of a block: kept rank of the first true match (0 = none), AP, validity."""

    first: np.ndarray
    ap: np.ndarray
    valid: np.ndarray


BLOCK_ENTRIES = 1 << 22  # distances per query block: 16 MB in float32, whatever the gallery size


def query_block(gallery_size: int, entries: int = BLOCK_ENTRIES) -> int:
    """Queries per block so that a [block, gallery] matrix holds about `entries` values."""
    return int(min(1024, max(8, entries // max(gallery_size, 1))))


def _as_1d(name: str, values, length: int) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.shape[0] != length:
        raise ValueError(f"rank: {name} has {array.shape[0]} entries, the distance matrix needs {length}")
    return array


class Gallery:
    """Gallery labels grouped by pid once, so each query finds its candidates by lookup."""

    def __init__(self, g_pids, g_camids, g_clothes=None, *, mode: str = "standard"):
        if mode not in MODES:
            raise ValueError(f"rank: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        self.pids = np.asarray(g_pids).reshape(-1)
        n = self.pids.shape[0]
        self.cams = _as_1d("g_camids", g_camids, n)
        if mode in CLOTHES_MODES and g_clothes is None:
            raise ValueError(f"rank: mode {mode!r} needs q_clothes and g_clothes")
        self.clothes = _as_1d("g_clothes", g_clothes, n) if mode in CLOTHES_MODES else None
        self.mode = mode
        self.size = n
        self.order = np.argsort(self.pids, kind="stable")  # candidates in gallery order per pid
        self.keys, self.starts, self.counts = np.unique(
            self.pids[self.order], return_index=True, return_counts=True
        )

    def candidates(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, gallery column) of every same-pid pair, rows ascending."""
        slot = np.searchsorted(self.keys, q_pids)
        slot = np.minimum(slot, max(len(self.keys) - 1, 0))
        found = (self.keys[slot] == q_pids) if len(self.keys) else np.zeros(len(q_pids), bool)
        counts = np.where(found, self.counts[slot] if len(self.keys) else 0, 0)
        rows = np.repeat(np.arange(len(q_pids)), counts)
        ends = np.cumsum(counts)
        within = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - counts, counts)
        cols = self.order[np.repeat(self.starts[slot], counts) + within] if rows.size else rows
        return rows, cols


def _search(flat, ng: int, rows, values, *, right: bool, where):
    """Per-row binary search in a row-sorted block flattened to `flat` (numpy or torch alike)."""
    lo = rows * 0
    hi = lo + ng
    base = rows * ng
    while bool((lo < hi).any()):
        active = lo < hi
        mid = (lo + hi) // 2
        probe = flat[base + (mid - (mid >= ng) * 1)]  # mid == ng only on finished entries
        go = (probe <= values) if right else (probe < values)
        lo = where(active & go, mid + 1, lo)
        hi = where(active & ~go, mid, hi)
    return lo


def _places(block, rows: np.ndarray, cols: np.ndarray, values) -> np.ndarray:
    """0-based place of each (row, col) in its row's stable ascending order of `block`."""
    ng = block.shape[1]
    if isinstance(block, np.ndarray):
        flat = np.sort(block, axis=1).reshape(-1)
        below = _search(flat, ng, rows, values, right=False, where=np.where)
        upto = _search(flat, ng, rows, values, right=True, where=np.where)
    else:
        import torch

        flat = torch.sort(block, dim=1).values.reshape(-1)
        r = torch.from_numpy(rows).to(block.device)
        below = _search(flat, ng, r, values, right=False, where=torch.where).cpu().numpy()
        upto = _search(flat, ng, r, values, right=True, where=torch.where).cpu().numpy()
    places = below.astype(np.int64)
    # Ties: an item at the same distance ranks above when it comes earlier in the gallery.
    tied = np.flatnonzero(upto - below > 1)
    for start in range(0, len(tied), 256):
        t = tied[start : start + 256]
        if isinstance(block, np.ndarray):
            same = block[rows[t]] == values[t][:, None]
            places[t] += (same & (np.arange(ng)[None, :] < cols[t][:, None])).sum(1)
        else:
            dev = block.device
            tr, tc, tt = (torch.from_numpy(a).to(dev) for a in (rows[t], cols[t], t))
            same = block[tr] == values[tt][:, None]
            earlier = torch.arange(ng, device=dev)[None, :] < tc[:, None]
            places[t] += (same & earlier).sum(1).cpu().numpy()
    return places


def rank_block(block, q_pids, q_camids, q_clothes, gallery: Gallery) -> QueryScores:
    """Scores of a block of queries: `block` [b, gallery] distances (numpy, or torch on any device)."""
    if not isinstance(block, np.ndarray) and block.device.type == "cpu":
        block = block.detach().numpy()  # no copy; numpy's value sort is the fastest on a CPU
    nq = block.shape[0]
    rows, cols = gallery.candidates(np.asarray(q_pids))
    if rows.size:
        values = block[rows, cols] if isinstance(block, np.ndarray) else _torch_pick(block, rows, cols)
        place = _places(block, rows, cols, values)
    else:
        place = np.zeros(0, np.int64)
    if _has_nan(block):
        raise ValueError("rank: the distance matrix has NaN entries")
    if gallery.mode == "any-camera":  # datasets without camera labels (LaST): no same-camera rule
        junk = np.zeros(len(cols), bool)
    else:  # camid -1 is no camera label: never the query's camera
        junk = (gallery.cams[cols] == q_camids[rows]) & (q_camids[rows] >= 0)
    if gallery.mode in CLOTHES_MODES:
        same_clothes = gallery.clothes[cols] == q_clothes[rows]
        junk |= same_clothes if gallery.mode == "cc" else ~same_clothes
    # Candidates of each row in ranking order; count the junk and the matches above each one.
    order = np.lexsort((place, rows))
    rows, place, junk = rows[order], place[order], junk[order]
    segment_start = np.searchsorted(rows, rows, side="left")
    junk_cum = np.cumsum(junk)
    junk_above = junk_cum - junk - (junk_cum[segment_start] - junk[segment_start])
    hit = ~junk
    hit_cum = np.cumsum(hit)
    hit_ordinal = hit_cum - (hit_cum[segment_start] - hit[segment_start])  # 1-based among hits
    kept_rank = place - junk_above + 1
    num_hits = np.bincount(rows[hit], minlength=nq)
    precision_sum = np.bincount(rows[hit], weights=hit_ordinal[hit] / kept_rank[hit], minlength=nq)
    first = np.zeros(nq, np.int64)
    hit_rows = rows[hit]
    if hit_rows.size:  # the first hit of each row is where the row's hit ordinal is 1
        first_of_row = hit_ordinal[hit] == 1
        first[hit_rows[first_of_row]] = kept_rank[hit][first_of_row]
    valid = num_hits > 0
    ap = precision_sum / np.maximum(num_hits, 1)
    return QueryScores(first, ap, valid)


def _torch_pick(block, rows, cols):
    import torch

    return block[torch.from_numpy(rows).to(block.device), torch.from_numpy(cols).to(block.device)]


def _has_nan(block) -> bool:
    if isinstance(block, np.ndarray):
        return bool(np.isnan(block).any()) if block.dtype.kind == "f" else False
    return bool(block.isnan().any()) if block.is_floating_point() else False


class RankAccumulator:
    """Collects the scores of query blocks ranked one at a time; `result()` gives the totals."""

    def __init__(self, max_rank: int, gallery_size: int):
        self.max_rank = max(1, min(max_rank, gallery_size))
        self.hist = np.zeros(self.max_rank + 1, np.int64)  # first-hit ranks, clipped
        self.ap_sum = 0.0
        self.num_valid = 0
        self.num_queries = 0

    def add(self, scores: QueryScores) -> None:
        first = scores.first[scores.valid]
        self.hist += np.bincount(np.minimum(first, self.max_rank + 1) - 1, minlength=self.max_rank + 1)
        self.ap_sum += float(scores.ap[scores.valid].sum())
        self.num_valid += int(scores.valid.sum())
        self.num_queries += len(scores.valid)

    def result(self) -> RankResult:
        excluded = self.num_queries - self.num_valid
        if self.num_valid == 0:
            return RankResult(np.zeros(self.max_rank), 0.0, 0, excluded)
        cmc = np.cumsum(self.hist[: self.max_rank]) / self.num_valid
        return RankResult(cmc, self.ap_sum / self.num_valid, self.num_valid, excluded)


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
    block: int | None = None,
) -> RankResult:
    """CMC, mAP and the counts of valid and excluded queries; see `rank` for the rules."""
    if mode not in MODES:
        raise ValueError(f"rank: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(distmat, np.ndarray) or not hasattr(distmat, "device"):
        distmat = np.asarray(distmat)
        if distmat.dtype.kind != "f":
            distmat = distmat.astype(np.float64)
    if distmat.ndim != 2:
        raise ValueError(f"rank: distance matrix must be 2-D, got shape {tuple(distmat.shape)}")
    nq, ng = distmat.shape
    if mode in CLOTHES_MODES and (q_clothes is None or g_clothes is None):
        raise ValueError(f"rank: mode {mode!r} needs q_clothes and g_clothes")
    gallery = Gallery(_as_1d("g_pids", g_pids, ng), g_camids, g_clothes, mode=mode)
    q_pids, q_camids = _as_1d("q_pids", q_pids, nq), _as_1d("q_camids", q_camids, nq)
    q_clothes = _as_1d("q_clothes", q_clothes, nq) if mode in CLOTHES_MODES else None
    total = RankAccumulator(max_rank, ng)
    block = block or query_block(ng)
    for start in range(0, nq, block):
        stop = min(start + block, nq)
        qc = None if q_clothes is None else q_clothes[start:stop]
        total.add(rank_block(distmat[start:stop], q_pids[start:stop], q_camids[start:stop], qc, gallery))
    return total.result()


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
) -> tuple[np.ndarray, float]:
    """(cmc, mAP): `cmc[k]` is the rank-(k+1) accuracy, over the queries with a true match.

    Modes decide which gallery items a query ignores: "standard" drops items with the same pid
    and camera (camid -1, no camera label, is never the same camera); "cc" (cloth-changing) also
    drops items with the same pid and clothes; "sc" (same-clothes) also drops items with the same
    pid and other clothes, so only same-clothes true matches count; "any-camera" drops nothing
    (datasets without camera labels: every same-pid gallery item is a true match). A query left
    with no true match is excluded from the averages
    (`rank_result` counts them). Ties keep gallery order. `distmat` may be a numpy array or a
    torch tensor (ranked on its device).
    """
    result = rank_result(distmat, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode, max_rank)
    return result.cmc, result.mAP
