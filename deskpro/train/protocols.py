"""The datasets' evaluation protocols: which rows are queries and gallery, and the ranking mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Protocol:
    """Which rows are queries and gallery, and the ranking mode, for one named protocol."""

    name: str
    query: np.ndarray  # reader positions
    gallery: np.ndarray
    mode: str
    single_shot: bool = False


def index_column(index, name: str) -> np.ndarray:
    values = index.column(name)
    return np.asarray(values.to_pylist(), dtype=object) if values.type == "string" else values.to_numpy()


def build_protocols(index, protocols: Sequence[str], *, split: str = "test") -> list[Protocol]:
    """Protocols over an index table. split "test": query/gallery rows; "val": PRCC's val rows.

    "standard": split query vs split gallery. "cc" / "sc" (PRCC layout): subset query_diff /
    query_same vs subset gallery on the full gallery, plus the single-shot variant; they rank in
    "cc" / "sc" mode when every row has a clothes id, else in standard mode (camera C differs in
    clothes by construction).
    """
    splits, subsets = index_column(index, "split"), index_column(index, "subset")
    rows = splits == "val" if split == "val" else np.isin(splits, ["query", "gallery", "test"])
    clothes_known = bool((index_column(index, "clothes_id")[rows] >= 0).all()) if rows.any() else False
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
