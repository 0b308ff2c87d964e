"""Every protocol (query selection + per-query gallery exclusion) against a brute-force definition:
the selected rows, and CMC / mAP from a plain loop over each query's kept gallery."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from deskpro.config import PRESETS
from deskpro.train.metrics import rank_result
from deskpro.train.protocols import DEFINITIONS, build_protocols, describe, expand


def random_index(seed: int, n: int = 160, clothes_known: bool = True) -> pa.Table:
    rng = np.random.default_rng(seed)
    split = rng.choice(["train", "query", "gallery", "val"], n, p=[0.15, 0.25, 0.4, 0.2])
    subset = np.where(split == "query", rng.choice(["query", "query_same", "query_diff"], n), split)
    subset = np.where(split == "val", rng.choice(["query_same", "query_diff", "query", "gallery"], n), subset)
    clothes = rng.integers(0, 3, n)
    if not clothes_known:
        clothes[rng.random(n) < 0.2] = -1
    return pa.table(
        {
            "pid": pa.array(rng.integers(0, 8, n)),
            "camid": pa.array(rng.integers(-1, 4, n)),  # -1: no camera label
            "clothes_id": pa.array(clothes),
            "split": list(split),
            "subset": list(subset),
        }
    )


def brute_rows(index: pa.Table, name: str, split: str) -> tuple[list[int], list[int]]:
    """The definition in words: queries/gallery of the split (val: by subset), then the
    protocol's subset and camera filters."""
    d = DEFINITIONS[name]
    rows = index.to_pylist()
    query, gallery = [], []
    for i, r in enumerate(rows):
        if split == "val":
            is_q = r["split"] == "val" and r["subset"].startswith("query")
            is_g = r["split"] == "val" and r["subset"] == "gallery"
        else:
            is_q, is_g = r["split"] == "query", r["split"] == "gallery"
        if d.query_subsets is not None:
            is_q = is_q and r["subset"] in d.query_subsets
            is_g = is_g and r["subset"] == "gallery"
        if d.cameras is not None and r["camid"] not in d.cameras:
            is_q = is_g = False
        if is_q:
            query.append(i)
        if is_g:
            gallery.append(i)
    return query, gallery


def dropped(q: dict, g: dict, exclusion: str) -> bool:
    """Whether a gallery image leaves query q's ranking: only images of the query's person."""
    if g["pid"] != q["pid"] or exclusion == "any-camera":
        return False
    same_cam = g["camid"] == q["camid"] and q["camid"] >= 0  # -1: no camera label
    if exclusion == "cc":
        return same_cam or g["clothes_id"] == q["clothes_id"]
    if exclusion == "sc":
        return same_cam or g["clothes_id"] != q["clothes_id"]
    return same_cam


def brute_scores(index, dist, query, gallery, exclusion, max_rank=50):
    rows = index.to_pylist()
    firsts, aps = [], []
    for q in query:
        kept = [
            (dist[q, g], pos, g) for pos, g in enumerate(gallery) if not dropped(rows[q], rows[g], exclusion)
        ]
        matches = [rows[g]["pid"] == rows[q]["pid"] for _, _, g in sorted(kept)]
        if not any(matches):
            continue
        hits, precisions = 0, []
        for k, m in enumerate(matches, 1):
            if m:
                hits += 1
                precisions.append(hits / k)
        firsts.append(matches.index(True) + 1)
        aps.append(np.mean(precisions))
    width = min(max_rank, len(gallery))
    cmc = np.array([np.mean([f <= k for f in firsts]) for k in range(1, width + 1)]) if firsts else None
    return cmc, (float(np.mean(aps)) if aps else 0.0), len(firsts)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("split", ["test", "val"])
@pytest.mark.parametrize("clothes_known", [True, False])
def test_every_protocol_equals_its_brute_force_definition(seed, split, clothes_known) -> None:
    index = random_index(seed, clothes_known=clothes_known)
    rng = np.random.default_rng(100 + seed)
    dist = np.round(rng.random((index.num_rows, index.num_rows)), 1)  # ties, kept in gallery order
    names = [n for n in DEFINITIONS if not DEFINITIONS[n].single_shot]
    built = {p.name: p for p in build_protocols(index, names, split=split)}
    expected = {"standard", "cc", "cc-single", "sc", "sc-single", "cam2-3", "cam3-4", "any-camera"}
    assert set(built) == expected | ({"cc-all", "sc-all"} if clothes_known else set())  # none vacuous
    for name in names:
        d = DEFINITIONS[name]
        query, gallery = brute_rows(index, name, split)
        exclusion = d.exclusion
        if exclusion in ("cc", "sc") and not clothes_known:
            exclusion = d.fallback
        if not query or not gallery or exclusion is None:
            assert name not in built, name
            continue
        protocol = built[name]
        assert protocol.query.tolist() == query and protocol.gallery.tolist() == gallery, name
        assert protocol.mode == exclusion
        cols = index.to_pydict()
        labels = {k: np.asarray(cols[k]) for k in ("pid", "camid", "clothes_id")}
        got = rank_result(
            dist[np.ix_(query, gallery)],
            labels["pid"][query],
            labels["pid"][gallery],
            labels["camid"][query],
            labels["camid"][gallery],
            labels["clothes_id"][query],
            labels["clothes_id"][gallery],
            mode=protocol.mode,
        )
        cmc, m_ap, valid = brute_scores(index, dist, query, gallery, exclusion)
        assert got.num_valid == valid, name
        if valid:
            np.testing.assert_allclose(got.cmc, cmc, err_msg=name)
            assert got.mAP == pytest.approx(m_ap), name


def test_the_exclusions_differ_where_they_should() -> None:
    """One query, four same-person gallery images: only the rule decides which count."""
    index = pa.table(
        {
            "pid": pa.array([1, 1, 1, 1, 1, 2]),
            "camid": pa.array([0, 0, 1, 1, 2, 1]),
            "clothes_id": pa.array([5, 6, 5, 6, 5, 9]),
            "split": ["query", "gallery", "gallery", "gallery", "gallery", "gallery"],
            "subset": ["query", "gallery", "gallery", "gallery", "gallery", "gallery"],
        }
    )
    rows = index.to_pylist()
    kept = {
        e: [g for g in range(1, 6) if rows[g]["pid"] == 1 and not dropped(rows[0], rows[g], e)]
        for e in ("standard", "cc", "sc", "any-camera")
    }
    assert kept == {"standard": [2, 3, 4], "cc": [3], "sc": [2, 4], "any-camera": [1, 2, 3, 4]}
    built = {p.name: p.mode for p in build_protocols(index, ("standard", "cc-all", "sc-all", "any-camera"))}
    assert built == {"standard": "standard", "cc-all": "cc", "sc-all": "sc", "any-camera": "any-camera"}


def test_every_preset_names_known_protocols_and_describes_them() -> None:
    for name, preset in PRESETS.items():
        lines = describe(preset.protocols)
        assert len(lines) == len(expand(preset.protocols)) >= 1, name
    assert expand(("cc",)) == ["cc", "cc-single"]
    with pytest.raises(ValueError, match="unknown protocol 'xx'"):
        expand(("xx",))


def test_the_report_says_what_each_protocol_is() -> None:
    from deskpro.train.evaluate import format_report

    row = {"stream": "body", "mode": "cc", "r1": 0.5, "r5": 1.0, "r10": 1.0, "mAP": 0.5}
    row.update(queries=2, gallery=3, excluded=0, trials=1)
    report = {"dataset": "ltcc", "split": "test", "checkpoint": "c.pt"}
    report["results"] = [{**row, "protocol": "cc-all"}, {**row, "protocol": "sc-all", "mode": "sc"}]
    text = format_report(report)
    assert f"cc-all: {DEFINITIONS['cc-all'].description}" in text
    assert f"sc-all: {DEFINITIONS['sc-all'].description}" in text and "standard:" not in text


@pytest.mark.parametrize("dataset", ["ltcc", "vc-clothes", "deepchange", "last"])
def test_published_sizes_in_the_docs_are_the_presets(dataset) -> None:
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/formats.md"):
        row = next(
            line for line in (repo / doc).read_text().splitlines() if line.startswith(f"| `{dataset}`")
        )
        for size in PRESETS[dataset].sizes:
            assert f"{size.images:,}" in row and f"{size.ids:,}" in row, (doc, size)
