"""docs/formats.md against real files: manifest, stage parts, index and shards made by the runner and pack."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _pipeline_utils import LOOSE_POLICY

from deskpro.manifests import scan, write_manifest
from deskpro.pipeline.nets.schp import LABELS
from deskpro.pipeline.options import StageRunOptions
from deskpro.pipeline.runner import run_stage
from deskpro.shards.pack import pack
from deskpro.synthetic import generator as synthetic

DOC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
BODY, FACE = (96, 32), 32


def doc_table(heading: str, first: str | None = None) -> list[dict[str, str]]:
    """A Markdown table under `heading` (a line '#... heading') as row dicts: the first one, or the
    one whose first header cell is `first`."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(heading)}", line))
    tables, current = [], []
    for line in lines[start + 1 :] + [""]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    for header, _, *body in tables:
        if first is None or header[0] == first:
            return [dict(zip(header, row)) for row in body]
    raise AssertionError(f"no table under {heading!r} starting with {first!r}")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Synthetic data -> manifest -> parse, detect, restore (no-net backends) -> shards (jpeg, raw)."""
    tmp = tmp_path_factory.mktemp("formats")
    root = synthetic.generate(
        tmp / "data", identities=3, images_per_camera=1, image_size=(96, 32), seed=3, progress=False
    )
    write_manifest(scan("synthetic", root), tmp / "manifest.parquet")
    work = tmp / "work"
    options = StageRunOptions(part_size=4, batch_size=4, executor="local", progress=False)
    run_stage("parse", tmp / "manifest.parquet", work, {"backend": "oracle"}, options)
    detect = {"backend": "oracle", "face_lr_size": 16, **LOOSE_POLICY}
    run_stage("detect", tmp / "manifest.parquet", work, detect, options)
    run_stage("restore", tmp / "manifest.parquet", work, {"backend": "none", "face_hr_size": 32}, options)
    for codec in ("jpeg", "raw"):
        pack(work, tmp / codec, body_size=BODY, face_size=FACE, codec=codec, shard_size=64, progress=False)
    return tmp


def type_name(t: pa.DataType) -> str:
    """Arrow type as the doc writes it: fixed-size lists as list<float>[4] (Parquet renames the item)."""
    if pa.types.is_fixed_size_list(t):
        return f"list<{t.value_type}>[{t.list_size}]"
    return str(t)


def check_parquet(path: Path, heading: str) -> None:
    schema = pq.read_schema(path)
    documented = doc_table(heading)
    assert [row["column"] for row in documented] == schema.names, heading
    for row in documented:
        field = schema.field(row["column"])
        assert type_name(field.type) == row["type"], (heading, row["column"], str(field.type))
        assert field.metadata and field.metadata.get(b"description"), (heading, row["column"])


def test_manifest_and_stage_parts_match_the_doc(made):
    check_parquet(made / "work" / "manifest.parquet", "Manifest")
    for stage in ("parse", "detect", "restore"):
        part = made / "work" / "stages" / stage / "part-00000.parquet"
        check_parquet(part, stage)
        assert b"docs/formats.md" in pq.read_schema(part).metadata[b"description"]
    metadata = pq.read_schema(made / "work" / "manifest.parquet").metadata
    assert {b"dataset", b"root", b"scan_time", b"skipped"} <= set(metadata)


def test_index_matches_the_doc(made):
    check_parquet(made / "jpeg" / "index.parquet", "index.parquet")
    assert b"docs/formats.md" in pq.read_schema(made / "jpeg" / "index.parquet").metadata[b"description"]


@pytest.mark.parametrize("codec", ["jpeg", "raw"])
def test_shard_datasets_and_attributes_match_the_doc(made, codec):
    documented = [row for row in doc_table("HDF5 datasets") if row["codec"] in ("any", codec)]
    with h5py.File(made / codec / "shard-00000.h5", "r") as f:
        rows = int(f.attrs["rows"])
        sizes = {"R": rows, "H": BODY[0], "W": BODY[1], "F": FACE, "3": 3}
        assert sorted(f.keys()) == sorted(row["dataset"] for row in documented)
        for row in documented:
            ds = f[row["dataset"]]
            assert ds.dtype.name == row["dtype"], row
            dims = [d.strip() for d in row["shape"].split(",")]
            if dims == ["B"]:
                assert ds.ndim == 1
            else:
                assert ds.shape == tuple(sizes[d] for d in dims), row
            assert ds.attrs.get("description"), row["dataset"]
            assert ds.fletcher32 and ds.chunks
            if row["dataset"] in ("body", "face_lr", "face_hr"):
                assert ds.attrs["colour_order"] == "RGB" and ds.attrs["layout"]
        assert sorted(f.attrs.keys()) == sorted(
            row["attribute"] for row in doc_table("HDF5 datasets", "attribute")
        )
        assert f.attrs["codec"] == codec and f.attrs["label_set"] == "lip"
        assert list(f.attrs["body_size"]) == list(BODY) and f.attrs["face_size"] == FACE


def test_label_sets_match_the_doc():
    documented = {row["label_set"]: row["index: name"] for row in doc_table("Label sets")}
    assert sorted(documented) == sorted(LABELS)
    for name, labels in LABELS.items():
        assert documented[name] == ", ".join(f"{i} {label}" for i, label in enumerate(labels))
