"""The manifest format: Arrow schema, building a table from scanned rows, Parquet I/O, statistics.

A manifest has one row per image (see DESIGN.md) and file-level metadata: the dataset name, the
absolute root, the scan time, and what the scan skipped (non-image files, junk images).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deskpro.common.files import atomic_path

SCHEMA = pa.schema(
    [  # field metadata: what each column means (docs/formats.md)
        pa.field("sample_id", pa.string(), metadata={"description": "path relative to root without suffix"}),
        pa.field(
            "path", pa.string(), metadata={"description": "image path relative to root, POSIX separators"}
        ),
        pa.field("pid", pa.int64(), metadata={"description": "person id from the dataset layout"}),
        pa.field("camid", pa.int64(), metadata={"description": "camera id from the dataset layout"}),
        pa.field(
            "clothes_id", pa.int64(), metadata={"description": "clothes id; -1 where the layout has none"}
        ),
        pa.field("split", pa.string(), metadata={"description": "train, val, query or gallery"}),
        pa.field(
            "subset", pa.string(), metadata={"description": "protocol subset, e.g. query_same, query_diff"}
        ),
    ]
)
SPLITS = ("train", "val", "query", "gallery")
SUBSETS = ("train", "val", "query", "gallery", "query_same", "query_diff")
# Columns whose values come from a closed set: anything else is refused when a manifest is read
# (a split "Train" would be packed, then never used by any step).
CLOSED_COLUMNS = {"split": SPLITS, "subset": SUBSETS}
# Smallest value of the integer columns (clothes_id -1: the layout has no clothes labels).
MIN_VALUES = {"pid": 0, "camid": -1, "clothes_id": -1}  # -1: unknown (LaST has no cameras)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# How many offending names an error message quotes.
EXAMPLES_SHOWN = 3


class ManifestError(ValueError):
    """A dataset folder or manifest file that cannot be read; the message names it and says why."""


@dataclass(frozen=True)
class Row:
    """One scanned image; `path` is relative to the dataset root, POSIX separators."""

    path: str
    pid: int
    camid: int
    clothes_id: int
    split: str
    subset: str


@dataclass
class ScanLog:
    """What a scan met besides good images: the caller turns it into errors or statistics."""

    root: Path
    layout: str
    mismatched: list[str] = field(default_factory=list)  # image names that break the layout
    non_image: int = 0  # skipped silently, reported in the stats
    junk: int = 0  # images the dataset itself marks as junk (Market pid -1)
    # Entries skipped, each named in the stats: folders or links that cannot be read (no
    # permission, a symlink loop) and names that are not UTF-8 (a manifest stores text).
    unreadable: list[str] = field(default_factory=list)
    bad_names: list[str] = field(default_factory=list)

    def raise_if_mismatched(self) -> None:
        if self.mismatched:
            examples = ", ".join(self.mismatched[:EXAMPLES_SHOWN])
            raise ManifestError(
                f"{self.root}: {len(self.mismatched)} file name(s) do not match the {self.layout} layout,"
                f" e.g. {examples}"
            )


def is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is a folder, else a ManifestError naming it."""
    if not path.is_dir():
        raise ManifestError(f"{path}: missing {what}")
    return path


def _entries(folder: Path, root: Path, log: ScanLog) -> Iterator[tuple[str, str, bool]]:
    """(name, path relative to root, is a folder) of the readable entries of `folder`, sorted by name.

    A folder that cannot be listed, an entry whose type cannot be read (a symlink loop, no
    permission) and a name that is not UTF-8 are skipped and recorded in `log`: named, not fatal.
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        log.unreadable.append(f"{_rel(folder, root)}/ ({exc.strerror or type(exc).__name__})")
        return
    for entry in entries:
        rel = _rel(Path(entry.path), root)
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:  # os.scandir decodes undecodable bytes as surrogates
            log.bad_names.append(ascii(rel)[1:-1])
            continue
        try:
            is_dir = entry.is_dir()
        except OSError as exc:
            log.unreadable.append(f"{rel} ({exc.strerror or type(exc).__name__})")
            continue
        yield entry.name, rel, is_dir


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def list_images(folder: Path, root: Path, log: ScanLog) -> Iterator[tuple[str, str]]:
    """(name, path relative to root) of the images directly in `folder`, sorted by name.

    Non-image files are counted in `log`; sub-folders are layout mismatches.
    """
    for name, rel, is_dir in _entries(folder, root, log):
        if is_dir:
            log.mismatched.append(rel + "/")
        elif is_image(name):
            yield name, rel
        else:
            log.non_image += 1


def subdirs(folder: Path, root: Path, log: ScanLog) -> Iterator[Path]:
    """The sub-folders of `folder`, sorted; loose files there are mismatches (images) or skipped."""
    for name, rel, is_dir in _entries(folder, root, log):
        if is_dir:
            yield folder / name
        elif is_image(name):
            log.mismatched.append(rel)
        else:
            log.non_image += 1


def sample_id_of(path: str) -> str:
    """The stable sample id: the path relative to root without its extension."""
    return str(PurePosixPath(path).with_suffix(""))


def build_table(rows: Iterable[Row], *, dataset: str, log: ScanLog, splits: Iterable[str]) -> pa.Table:
    """The manifest table of `rows`, checked: every expected split non-empty, sample ids unique."""
    rows = sorted(rows, key=lambda r: r.path)
    log.raise_if_mismatched()
    present = {r.split for r in rows}
    for split in splits:
        if split not in present:
            raise ManifestError(f"{log.root}: split {split!r} has no images ({log.layout} layout)")
    ids = [sample_id_of(r.path) for r in rows]
    _raise_on_duplicates(ids, log.root)
    columns = {
        "sample_id": ids,
        "path": [r.path for r in rows],
        "pid": [r.pid for r in rows],
        "camid": [r.camid for r in rows],
        "clothes_id": [r.clothes_id for r in rows],
        "split": [r.split for r in rows],
        "subset": [r.subset for r in rows],
    }
    metadata = {
        b"dataset": dataset.encode(),
        b"root": str(Path(log.root).resolve()).encode(),
        b"scan_time": datetime.now(timezone.utc).isoformat(timespec="seconds").encode(),
        b"skipped": json.dumps(
            {
                "non_image": log.non_image,
                "junk": log.junk,
                "unreadable": log.unreadable,
                "bad_names": log.bad_names,
            }
        ).encode(),
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA.with_metadata(metadata))


def _raise_on_duplicates(ids: list[str], where: Path | str) -> None:
    seen: set[str] = set()
    dupes = sorted({i for i in ids if i in seen or seen.add(i)})
    if dupes:
        raise ManifestError(
            f"{where}: {len(dupes)} duplicate sample id(s) (same name, different extension?),"
            f" e.g. {', '.join(dupes[:EXAMPLES_SHOWN])}"
        )


def dense_ids(keys: Iterable) -> dict:
    """A dense int (0, 1, ...) per distinct key, in sorted key order: stable across scans."""
    return {k: i for i, k in enumerate(sorted(set(keys)))}


# ---- Parquet I/O


def write_manifest(table: pa.Table, path: str | os.PathLike) -> None:
    """Write `table` to Parquet at `path` (parent folders created), via a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | os.PathLike) -> pa.Table:
    """Read and check a manifest; ManifestError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ManifestError(f"{path}: not a readable Parquet file ({e})") from None
    _check_schema(table, path)
    _check_values(table, path)
    _raise_on_duplicates(table.column("sample_id").to_pylist(), path)
    return table


def _check_values(table: pa.Table, path: Path) -> None:
    """Refuse values outside a closed column's set, negative ids and paths that leave the root."""
    for column, allowed in CLOSED_COLUMNS.items():
        values = set(table.column(column).unique().to_pylist())
        unknown = sorted(values - set(allowed), key=str)
        if unknown:
            raise ManifestError(
                f"{path}: column {column!r} holds {unknown[0]!r}"
                + (f" (and {len(unknown) - 1} more unknown values)" if len(unknown) > 1 else "")
                + f"; allowed: {', '.join(allowed)}"
            )
    for column, lowest in MIN_VALUES.items():
        smallest = pc.min(table.column(column)).as_py()
        if smallest is not None and smallest < lowest:
            raise ManifestError(f"{path}: column {column!r} holds {smallest}; its values are >= {lowest}")
    for rel in table.column("path").to_pylist():
        parts = PurePosixPath(rel or "").parts
        if not parts or parts[0] == "/" or ".." in parts:
            raise ManifestError(
                f"{path}: column 'path' holds {rel!r}; paths are relative to the root, without .."
            )


def _check_schema(table: pa.Table, path: Path) -> None:
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise ManifestError(f"{path}: not a manifest, missing column(s) {', '.join(missing)}")
    for f in SCHEMA:
        actual = table.schema.field(f.name).type
        if actual != f.type:
            raise ManifestError(f"{path}: column {f.name!r} is {actual}, expected {f.type}")
    meta = table.schema.metadata or {}
    absent = [k.decode() for k in (b"dataset", b"root", b"scan_time") if k not in meta]
    if absent:
        raise ManifestError(f"{path}: manifest metadata lacks {', '.join(absent)}")


def is_manifest_file(path: str | os.PathLike) -> bool:
    """True when `path` is a manifest deskpro wrote (a Parquet file with the manifest schema and a
    dataset name): the only kind of existing file `deskpro manifest -o` replaces without --force."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError):
        return False
    return set(SCHEMA.names) <= set(schema.names) and bool((schema.metadata or {}).get(b"dataset"))


def manifest_info(table: pa.Table) -> dict:
    """The file-level metadata: {"dataset", "root", "scan_time"} as strings."""
    meta = table.schema.metadata or {}
    return {key: meta.get(key.encode(), b"").decode() for key in ("dataset", "root", "scan_time")}


def skipped_counts(table: pa.Table) -> dict:
    """How many entries the scan skipped: {"non_image": n, "junk": n} (zeros when not recorded), plus
    "unreadable" and "bad_names" where some were skipped (see skipped_entries)."""
    skipped = skipped_entries(table)
    counts = {"non_image": int(skipped.get("non_image", 0)), "junk": int(skipped.get("junk", 0))}
    counts.update({k: len(skipped[k]) for k in ("unreadable", "bad_names") if skipped.get(k)})
    return counts


def skipped_entries(table: pa.Table) -> dict:
    """The scan's record of what it skipped, as stored in the manifest's metadata."""
    raw = (table.schema.metadata or {}).get(b"skipped")
    return json.loads(raw) if raw else {}


# ---- statistics


def format_stats(table: pa.Table) -> str:
    """A statistics table: ids, images and clothes per split, and per subset where a split has several."""
    info = manifest_info(table)
    cols = table.select(["pid", "clothes_id", "split", "subset"]).to_pydict()
    records = list(zip(cols["split"], cols["subset"], cols["pid"], cols["clothes_id"]))
    lines = [
        f"{info['dataset']} manifest of {info['root']} (scanned {info['scan_time']})",
        f"  {'split':<9}{'subset':<12}{'ids':>7}{'images':>9}{'clothes':>9}",
    ]
    order = [s for s in SPLITS if s in cols["split"]] + sorted(set(cols["split"]) - set(SPLITS))
    for split in order:
        in_split = [r for r in records if r[0] == split]
        subsets = sorted({r[1] for r in in_split})
        lines.append(_stats_line(split, subsets[0] if len(subsets) == 1 else "(all)", in_split))
        if len(subsets) > 1:
            lines += [_stats_line("", s, [r for r in in_split if r[1] == s]) for s in subsets]
    lines.append(_stats_line("total", "", records))
    skipped = skipped_counts(table)
    lines.append(f"  skipped: {skipped['non_image']} non-image file(s), {skipped['junk']} junk image(s)")
    entries = skipped_entries(table)
    for key, what in (("unreadable", "unreadable entries"), ("bad_names", "non-UTF-8 names")):
        if entries.get(key):
            examples = "; ".join(entries[key][:EXAMPLES_SHOWN])
            lines.append(f"  skipped {len(entries[key])} {what}: {examples}")
    return "\n".join(lines)


def _stats_line(split: str, subset: str, records: list[tuple]) -> str:
    ids = len({r[2] for r in records})
    clothes = {r[3] for r in records if r[3] >= 0}
    clothes_text = str(len(clothes)) if clothes else "-"
    return f"  {split:<9}{subset:<12}{ids:>7}{len(records):>9}{clothes_text:>9}"
