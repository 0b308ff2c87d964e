"""The datasets' evaluation protocols: which rows are queries and gallery, and what a query ignores.

Every protocol is one mechanism: a query selection (the split's queries, or a subset of them, or
those of some cameras), a gallery selection, and a per-query gallery exclusion (the ranking mode of
`deskpro.train.metrics`): "standard" drops the query person's same-camera gallery images; "cc"
also drops their same-clothes ones (only cloth-changing matches count); "sc" also drops their
other-clothes ones (only same-clothes matches count); "any-camera" drops nothing (no camera
labels). The PRCC style (queries chosen by subset, camera C = other clothes) and the LTCC style
(all queries, clothes decided per query by the exclusion) are both definitions in `DEFINITIONS`.
"""

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


@dataclass(frozen=True)
class ProtocolDefinition:
    """A named protocol: query selection, gallery selection, per-query gallery exclusion."""

    name: str
    description: str
    query_subsets: tuple[str, ...] | None = None  # None: every query row of the split
    cameras: tuple[int, ...] | None = None  # None: every camera; else both sides keep only these camids
    exclusion: str = "standard"  # the ranking mode (metrics.MODES)
    # The mode when some rows have no clothes id (-1): None drops the protocol. PRCC's cc / sc fall
    # back to "standard" because its camera C shows other clothes by construction.
    fallback: str | None = None
    single_shot: bool = False


def _prcc(name: str, subset: str, what: str, single: bool) -> ProtocolDefinition:
    shot = "; one random gallery image per person, mean over trials" if single else ""
    return ProtocolDefinition(
        name,
        f"PRCC {what}: queries of subset {subset} against the gallery; mode {name[:2]}{shot}",
        query_subsets=(subset,),
        exclusion=name[:2],
        fallback="standard",
        single_shot=single,
    )


DEFINITIONS: dict[str, ProtocolDefinition] = {
    d.name: d
    for d in (
        ProtocolDefinition("standard", "all queries; drops the person's same-camera gallery images"),
        _prcc("cc", "query_diff", "cross-clothes (camera C)", False),
        _prcc("cc-single", "query_diff", "cross-clothes (camera C)", True),
        _prcc("sc", "query_same", "same-clothes (camera B)", False),
        _prcc("sc-single", "query_same", "same-clothes (camera B)", True),
        ProtocolDefinition(
            "cc-all",
            "cloth-changing over all queries: drops the person's same-camera and same-clothes gallery images",
            exclusion="cc",
        ),
        ProtocolDefinition(
            "sc-all",
            "same-clothes over all queries: drops the person's same-camera and other-clothes gallery images",
            exclusion="sc",
        ),
        ProtocolDefinition(
            "cam2-3",
            "VC-Clothes same-clothes setting: queries and gallery of cameras 2 and 3 only; standard mode",
            cameras=(1, 2),
        ),
        ProtocolDefinition(
            "cam3-4",
            "VC-Clothes cloth-changing setting: queries and gallery of cameras 3 and 4 only; standard mode",
            cameras=(2, 3),
        ),
        ProtocolDefinition(
            "any-camera",
            "all queries; no gallery image dropped (no camera labels): every same-person image is a match",
            exclusion="any-camera",
        ),
    )
}
# A preset's protocol name -> the protocols it reports (PRCC's also report the single-shot variant).
EXPANDS = {"cc": ("cc", "cc-single"), "sc": ("sc", "sc-single")}


def index_column(index, name: str) -> np.ndarray:
    values = index.column(name)
    return np.asarray(values.to_pylist(), dtype=object) if values.type == "string" else values.to_numpy()


def roles(index, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(is a query, is a gallery row) per index row. split "test": the query and gallery splits;
    "val": val rows by subset (gallery, or any subset starting with "query")."""
    splits, subsets = index_column(index, "split"), index_column(index, "subset")
    if split == "val":
        in_val = splits == "val"
        is_query = np.array([str(s).startswith("query") for s in subsets], bool) & in_val
        return is_query, in_val & (subsets == "gallery")
    if split != "test":
        raise ValueError(f"unknown split {split!r}; expected test or val")
    return splits == "query", splits == "gallery"


def expand(names: Sequence[str]) -> list[str]:
    """The protocol names a preset's list stands for (cc -> cc, cc-single), checked."""
    out = []
    for name in names:
        for full in EXPANDS.get(name, (name,)):
            if full not in DEFINITIONS:
                known = ", ".join(sorted(set(DEFINITIONS) | set(EXPANDS)))
                raise ValueError(f"unknown protocol {name!r}; known: {known}")
            out.append(full)
    return out


def build_protocols(index, protocols: Sequence[str], *, split: str = "test") -> list[Protocol]:
    """Protocols over an index table (see `DEFINITIONS`); split "test" or "val" (see `roles`).

    A protocol whose query or gallery selection is empty is left out, and so is one that needs
    clothes ids (cc-all, sc-all) where some rows lack them.
    """
    is_query, is_gallery = roles(index, split)
    subsets, camids = index_column(index, "subset"), index_column(index, "camid")
    clothes = index_column(index, "clothes_id")
    used = is_query | is_gallery
    clothes_known = bool((clothes[used] >= 0).all()) if used.any() else False
    out = []
    for name in expand(protocols):
        definition = DEFINITIONS[name]
        query, gallery = is_query, is_gallery
        if definition.query_subsets is not None:
            query = query & np.isin(subsets, definition.query_subsets)
            gallery = gallery & (subsets == "gallery")
        if definition.cameras is not None:
            on_camera = np.isin(camids, definition.cameras)
            query, gallery = query & on_camera, gallery & on_camera
        mode = definition.exclusion
        if mode in ("cc", "sc") and not clothes_known:
            mode = definition.fallback
            if mode is None:
                continue
        protocol = Protocol(
            name, np.flatnonzero(query), np.flatnonzero(gallery), mode, definition.single_shot
        )
        if protocol.query.size and protocol.gallery.size:
            out.append(protocol)
    return out


def describe(names: Sequence[str]) -> list[str]:
    """One line per protocol that `names` stands for: its name and definition."""
    return [f"{name}: {DEFINITIONS[name].description}" for name in expand(names)]


def single_shot_columns(g_pids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random gallery column per identity (sorted column numbers)."""
    order = rng.permutation(g_pids.size)
    _, first = np.unique(g_pids[order], return_index=True)
    return np.sort(order[first])
