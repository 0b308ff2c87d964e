"""pack (manifest + stage outputs -> shards) and the `pack` / `verify` commands.

The work directory is built by hand in the shared stage-output format: each image is two flat
colour blocks with a matching two-label parse map, and each face is one flat colour, so every value
the shards should hold is known without re-running the resize code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _pipeline_utils import LOOSE_POLICY
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.common.files import OutputPathError
from deskpro.manifests import SCHEMA, write_manifest
from deskpro.pipeline.plan import manifest_fingerprint
from deskpro.pipeline.stages import DETECT_SCHEMA, PARSE_SCHEMA, RESTORE_SCHEMA
from deskpro.shards import ShardError, ShardReader
from deskpro.shards.pack import PackError, pack

N = 6
IMAGE_HW = (96, 48)
BODY = (48, 24)
FACE = 16
NO_FACE = 1  # detect finds no face in this sample


def colour(i: int, part: int) -> tuple[int, int, int]:
    """A distinct RGB colour per sample and part (0 top, 1 bottom, 2 face_lr, 3 face_hr)."""
    return (20 + 35 * i, 200 - 30 * part, 60 + 40 * part)


def flat(hw: tuple[int, int], rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (*hw, 3)).copy()


def encode(rgb: np.ndarray, ext: str) -> bytes:
    """True-RGB PNG/JPEG bytes (cv2 writes BGR arrays)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), params)
    assert ok
    return buf.tobytes()


def write_part(folder: Path, name: str, rows: list[dict], schema: pa.Schema) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / name)


@pytest.fixture()
def work(tmp_path) -> Path:
    """A dataset root with N images and a work directory with complete parse/detect/restore outputs."""
    root, work = tmp_path / "root", tmp_path / "work"
    h, w = IMAGE_HW
    manifest_rows, parse_rows, detect_rows, restore_rows = [], [], [], []
    for i in range(N):
        rel = f"rgb/test/{'ABC'[i % 3]}/{i:03d}/{i}.png"
        image = np.concatenate([flat((h // 2, w), colour(i, 0)), flat((h // 2, w), colour(i, 1))])
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), image[..., ::-1])
        sid = rel.removesuffix(".png")
        manifest_rows.append(
            dict(
                sample_id=sid,
                path=rel,
                pid=i // 2,
                camid=i % 3,
                clothes_id=i % 3 // 2,
                split="query",
                subset=("gallery", "query_same", "query_diff")[i % 3],
            )
        )
        labels = np.concatenate([np.full((h // 2, w), 2, np.uint8), np.full((h // 2, w), 5, np.uint8)])
        ok, png = cv2.imencode(".png", labels)
        parse_rows.append(dict(sample_id=sid, parse_png=png.tobytes(), label_set="lip", error=None))
        has_face = i != NO_FACE
        face_lr = encode(flat((8, 8), colour(i, 2)), ".png") if has_face else None
        detect_rows.append(
            dict(
                sample_id=sid,
                has_face=has_face,
                face_score=0.99 if has_face else None,
                face_box=[1.0, 2.0, 9.0, 10.0] if has_face else None,
                landmarks=[float(v) for v in range(10)] if has_face else None,
                face_lr_png=face_lr,
                error=None,
            )
        )
        face_hr = encode(flat((12, 12), colour(i, 3)), ".jpg") if has_face else None
        restore_rows.append(dict(sample_id=sid, face_hr_jpg=face_hr, error=None))
    manifest = pa.Table.from_pylist(manifest_rows, schema=SCHEMA).replace_schema_metadata(
        {b"dataset": b"synthetic", b"root": str(root).encode(), b"scan_time": b"2026-01-01T00:00:00+00:00"}
    )
    write_manifest(manifest, work / "manifest.parquet")
    stages = work / "stages"
    # Parse output in two parts, in an order other than the manifest's: pack joins by sample id.
    write_part(stages / "parse", "part-00000.parquet", parse_rows[3:], PARSE_SCHEMA)
    write_part(stages / "parse", "part-00001.parquet", parse_rows[:3], PARSE_SCHEMA)
    write_part(stages / "detect", "part-00000.parquet", detect_rows, DETECT_SCHEMA)
    write_part(stages / "restore", "part-00000.parquet", restore_rows, RESTORE_SCHEMA)
    write_stage_json(work, manifest_fingerprint(manifest, str(root)))
    return work


def fingerprint(name: str, manifest_fp: str, upstream: dict | None = None, **options) -> dict:
    """A stage fingerprint as the runner writes it (only the keys pack compares matter)."""
    return {
        "stage": name,
        "manifest": manifest_fp,
        "options": {"weights": {"sha256": f"{name}-sha"}, **options},
        "upstream": upstream,
    }


def write_stage_json(work: Path, manifest_fp: str, detect_options: dict | None = None) -> None:
    """stage.json for each stage; restore's upstream is the detect fingerprint of the first run."""
    detect = fingerprint("detect", manifest_fp)
    fingerprints = {
        "parse": fingerprint("parse", manifest_fp),
        "detect": fingerprint("detect", manifest_fp, **(detect_options or {})),
        "restore": fingerprint("restore", manifest_fp, upstream=detect),
    }
    for name, fp in fingerprints.items():
        (work / "stages" / name / "stage.json").write_text(
            json.dumps({"stage": name, "fingerprint": fp, "complete": True})
        )


def set_error(work: Path, stage: str, schema: pa.Schema, index: int, message: str = "bad image") -> None:
    """Turn manifest sample `index` in a stage's outputs into an error row (outputs null, as stages write)."""
    parts = sorted((work / "stages" / stage).glob("part-*.parquet"))
    rows = [r for p in parts for r in pq.read_table(p).to_pylist()]
    for p in parts:
        p.unlink()
    target = next(r for r in rows if r["sample_id"] == manifest_ids(work)[index])
    for key in target:
        if key not in ("sample_id", "error"):
            target[key] = None
    target["error"] = message
    write_part(work / "stages" / stage, "part-00000.parquet", rows, schema)


def manifest_ids(work: Path) -> list[str]:
    return pq.read_table(work / "manifest.parquet").column("sample_id").to_pylist()


def pack_small(work: Path, out: Path, **options):
    options = {
        "body_size": BODY,
        "face_size": FACE,
        "codec": "raw",
        "shard_size": 4,
        "progress": False,
        **options,
    }
    return pack(work, out, **options)


def test_pack_joins_manifest_and_stages(work, tmp_path):
    summary = pack_small(work, tmp_path / "shards")
    assert (summary.rows, summary.shards, summary.with_face) == (N, 2, N - 1)
    assert summary.skipped == {"parse": 0, "detect": 0, "image": 0} and summary.face_hr_source == "restore"
    reader = ShardReader(tmp_path / "shards")
    index = reader.index.to_pylist()
    manifest = pq.read_table(work / "manifest.parquet").to_pylist()
    assert [r["sample_id"] for r in index] == [m["sample_id"] for m in manifest]
    for r, m in zip(index, manifest):
        assert (r["pid"], r["camid"], r["clothes_id"], r["split"], r["subset"]) == (
            m["pid"],
            m["camid"],
            m["clothes_id"],
            m["split"],
            m["subset"],
        )
    half = BODY[0] // 2
    for i in range(N):
        sample = reader.read(i)
        assert sample["body"].shape == (*BODY, 3)
        np.testing.assert_array_equal(sample["body"][:half], flat((half, BODY[1]), colour(i, 0)))
        np.testing.assert_array_equal(sample["body"][half:], flat((half, BODY[1]), colour(i, 1)))
        np.testing.assert_array_equal(sample["parse"][:half], 2)
        np.testing.assert_array_equal(sample["parse"][half:], 5)
        assert sample["has_face"] == (i != NO_FACE) == index[i]["has_face"]
        if i == NO_FACE:
            assert not sample["face_lr"].any() and not sample["face_hr"].any()
            continue
        np.testing.assert_array_equal(sample["face_lr"], flat((FACE, FACE), colour(i, 2)))
        assert np.abs(sample["face_hr"].astype(int) - colour(i, 3)).max() <= 3  # JPEG from the stage
    assert reader.meta["dataset"] == "synthetic" and reader.meta["label_set"] == "lip"
    assert reader.meta["stages"]["parse"]["fingerprint"]["options"] == {"weights": {"sha256": "parse-sha"}}
    assert reader.meta["face_hr_source"] == "restore"
    assert reader.options["body_size"] == BODY and reader.options["face_size"] == FACE


def test_without_restore_the_restored_face_is_the_low_resolution_face(work, tmp_path):
    shutil.rmtree(work / "stages" / "restore")
    summary = pack_small(work, tmp_path / "shards")
    assert summary.face_hr_source == "face_lr"
    reader = ShardReader(tmp_path / "shards")
    assert reader.meta["face_hr_source"] == "face_lr" and reader.meta["stages"]["restore"] is None
    sample = reader.read(0)
    np.testing.assert_array_equal(sample["face_hr"], sample["face_lr"])


def test_pack_skips_error_rows_and_counts_them(work, tmp_path):
    ids = manifest_ids(work)
    set_error(work, "parse", PARSE_SCHEMA, 2)
    set_error(work, "detect", DETECT_SCHEMA, 4)
    set_error(work, "restore", RESTORE_SCHEMA, 3, "GPEN failed")
    summary = pack_small(work, tmp_path / "shards")
    assert summary.skipped == {"parse": 1, "detect": 1, "image": 0}
    assert summary.rows == N - 2 and summary.faces_dropped == 1
    reader = ShardReader(tmp_path / "shards")
    index = reader.index.to_pylist()
    assert [r["sample_id"] for r in index] == [ids[i] for i in (0, 1, 3, 5)]
    assert [r["has_face"] for r in index] == [True, False, False, True]  # 3: restore failed
    assert reader.meta["skipped"] == {"parse": 1, "detect": 1, "image": 0}
    assert "skipped for errors: parse 1, detect 1" in summary.format()


def test_pack_refuses_an_unfinished_stage(work, tmp_path):
    table = pq.read_table(work / "stages" / "detect" / "part-00000.parquet")
    pq.write_table(table.slice(0, N - 2), work / "stages" / "detect" / "part-00000.parquet")
    with pytest.raises(PackError, match=r"stage 'detect' has no output for 2 of 6 samples .*did not finish"):
        pack_small(work, tmp_path / "shards")
    assert not (tmp_path / "shards").exists()


def test_pack_refuses_a_missing_stage(work, tmp_path):
    shutil.rmtree(work / "stages" / "detect")  # parse may be missing (no parse maps), detect not
    with pytest.raises(PackError, match="stages/detect: missing; run the detect stage"):
        pack_small(work, tmp_path / "shards")


def test_pack_refuses_a_parse_map_of_another_size(work, tmp_path):
    table = pq.read_table(work / "stages" / "parse" / "part-00000.parquet")
    ok, png = cv2.imencode(".png", np.zeros((10, 10), np.uint8))
    column = pa.array([png.tobytes()] * table.num_rows, pa.binary())
    table = table.set_column(table.schema.get_field_index("parse_png"), "parse_png", column)
    pq.write_table(table, work / "stages" / "parse" / "part-00000.parquet")
    with pytest.raises(PackError, match="label map is 10x10 but the image is 96x48"):
        pack_small(work, tmp_path / "shards")


def test_pack_is_deterministic(work, tmp_path):
    pack_small(work, tmp_path / "a", codec="jpeg", shard_size=4)
    pack_small(work, tmp_path / "b", codec="jpeg", shard_size=4)
    for name in ("shard-00000.h5", "shard-00001.h5", "index.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a, b = (json.loads((tmp_path / d / "catalog.json").read_text()) for d in "ab")
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a["index"]["sha256"] == b["index"]["sha256"]


def test_pack_refuses_a_complete_output_unless_overwrite(work, tmp_path):
    pack_small(work, tmp_path / "shards")
    with pytest.raises(ShardError, match="already holds complete shards"):
        pack_small(work, tmp_path / "shards")
    assert pack_small(work, tmp_path / "shards", shard_size=N, overwrite=True).shards == 1
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "catalog.json",
        "index.parquet",
        "shard-00000.h5",
    ]


def test_cli_pack_then_verify(work, tmp_path):
    out = tmp_path / "shards"
    runner = CliRunner()
    args = [
        "pack",
        str(work),
        "-o",
        str(out),
        "--body-size",
        "48x24",
        "--face-size",
        "16",
        "--shard-size",
        "4",
    ]
    result = runner.invoke(main, [*args, "--codec", "raw", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "6 samples (5 with a face) in 2 shards" in result.output
    assert ShardReader(out).options["codec"] == "raw"

    result = runner.invoke(main, ["verify", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "OK (2 shards, 6 samples)" in result.output

    again = runner.invoke(main, [*args, "--no-progress"])
    assert again.exit_code == 1 and "already holds complete shards" in again.output

    path = out / "shard-00001.h5"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    result = runner.invoke(main, ["verify", str(out), "--no-progress"])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == "shard-00001.h5: sha256 differs from catalog.json (the file changed or is corrupt)"
    )

    (out / "catalog.json").unlink()
    result = runner.invoke(main, ["verify", str(out), "--no-progress"])
    assert result.exit_code == 1 and "no catalog.json; the shard directory is incomplete" in result.output


def test_cli_rejects_bad_options_and_unfinished_work(work, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["pack", str(work), "-o", str(tmp_path / "s"), "--body-size", "384"])
    assert result.exit_code == 2 and "expected HEIGHTxWIDTH" in result.output
    (work / "stages" / "detect" / "part-00000.parquet").unlink()
    result = runner.invoke(main, ["pack", str(work), "-o", str(tmp_path / "s"), "--no-progress"])
    assert result.exit_code == 1 and "no part-*.parquet files" in result.output


def test_pack_after_the_real_stage_runner(tmp_path):
    """Integration: synthetic data -> runner (oracle parse/detect, local) -> pack -> verify."""
    from deskpro.manifests import scan
    from deskpro.pipeline.options import StageRunOptions
    from deskpro.pipeline.runner import run_stage
    from deskpro.shards import verify
    from deskpro.synthetic import generator as synthetic

    root = synthetic.generate(
        tmp_path / "data", identities=3, images_per_camera=1, image_size=(96, 32), seed=1, progress=False
    )
    write_manifest(scan("synthetic", root), tmp_path / "manifest.parquet")
    work = tmp_path / "work"
    options = StageRunOptions(part_size=4, batch_size=4, executor="local", progress=False)
    run_stage("parse", tmp_path / "manifest.parquet", work, {"backend": "oracle"}, options)
    run_stage(
        "detect",
        tmp_path / "manifest.parquet",
        work,
        {"backend": "oracle", "face_lr_size": 32, **LOOSE_POLICY},
        options,
    )
    summary = pack_small(work, tmp_path / "shards", body_size=(96, 32), codec="jpeg")
    assert verify(tmp_path / "shards").ok
    reader = ShardReader(tmp_path / "shards")
    truth = synthetic.read_face_truth(root)
    manifest = pq.read_table(work / "manifest.parquet").to_pylist()
    assert summary.rows == len(manifest) == len(reader)
    for i, row in enumerate(manifest):
        sample = reader.read(i)
        # Body at its own size: the parse map is the ground truth, unchanged.
        np.testing.assert_array_equal(sample["parse"], synthetic.read_parse_truth(root, row["path"]))
        assert sample["has_face"] == truth[row["path"]][0]
    assert reader.meta["stages"]["parse"]["complete"] is True and reader.meta["label_set"] == "lip"


# ---------------------------------------------------------------- nothing silent (issue 10)


def test_pack_refuses_restore_made_from_an_earlier_detect(work, tmp_path):
    """`detect --overwrite` with new options, then pack without rerunning restore: refused."""
    fp = json.loads((work / "stages" / "parse" / "stage.json").read_text())["fingerprint"]["manifest"]
    write_stage_json(work, fp, detect_options={"min_size": 40})
    with pytest.raises(
        PackError, match=r"stage 'restore' was made from an earlier detect output.*deskpro restore"
    ):
        pack_small(work, tmp_path / "shards")
    assert not (tmp_path / "shards").exists()


def test_pack_refuses_a_stale_or_unfinished_stage(work, tmp_path):
    write_stage_json(work, "another-manifest")
    with pytest.raises(
        PackError, match=r"stage 'parse' was run on another manifest.*deskpro parse --overwrite"
    ):
        pack_small(work, tmp_path / "shards")
    info = json.loads((work / "stages" / "parse" / "stage.json").read_text())
    write_stage_json(work, manifest_fingerprint(*_work_manifest(work)))
    path = work / "stages" / "detect" / "stage.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))
    with pytest.raises(PackError, match=r"stage 'detect' did not finish"):
        pack_small(work, tmp_path / "shards")
    assert info["fingerprint"]["manifest"] == "another-manifest"


def _work_manifest(work: Path):
    from deskpro.manifests import manifest_info, read_manifest

    table = read_manifest(work / "manifest.parquet")
    return table, manifest_info(table)["root"]


def test_an_image_removed_since_preprocess_is_skipped_counted_and_named(work, tmp_path):
    table, root = _work_manifest(work)
    gone = table.column("path")[4].as_py()
    (Path(root) / gone).unlink()
    summary = pack_small(work, tmp_path / "shards")
    assert summary.skipped["image"] == 1 and summary.rows == N - 1
    assert len(summary.missing_images) == 1 and summary.missing_images[0].startswith(f"{gone}: cannot read")
    assert f"unreadable images skipped: {gone}: cannot read" in summary.format()
    assert ShardReader(tmp_path / "shards").meta["missing_images"] == summary.missing_images


def test_pack_decodes_dataset_images_with_the_common_decoder(work, tmp_path, monkeypatch):
    """One decoder for dataset images: deskpro.common.images.read_image_rgb (16-bit PNG, EXIF...)."""
    import deskpro.shards.pack as pack_module

    seen = []

    def fake_read(path):
        seen.append(Path(path).name)
        return np.full((*IMAGE_HW, 3), 77, np.uint8)

    monkeypatch.setattr(pack_module, "read_image_rgb", fake_read)
    pack_small(work, tmp_path / "shards")
    assert len(seen) == N
    assert (ShardReader(tmp_path / "shards").read(0)["body"] == 77).all()


def test_pack_refuses_to_write_onto_its_inputs_or_foreign_files(work, tmp_path):
    table, root = _work_manifest(work)
    image = Path(root) / table.column("path")[0].as_py()
    before = image.read_bytes()
    for out in (work, work / "stages" / "sub", image, Path(root)):
        with pytest.raises(OutputPathError, match="an input of pack"):
            pack_small(work, out, force=True)
    assert image.read_bytes() == before
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"keep me")
    with pytest.raises(
        OutputPathError, match=r"holds files pack did not write \(e.g. holiday.jpg\).*--force"
    ):
        pack_small(work, foreign)
    assert pack_small(work, foreign, force=True).rows == N
    assert (foreign / "holiday.jpg").read_bytes() == b"keep me"
    report = tmp_path / "notes.txt"
    report.write_text("mine")
    with pytest.raises(OutputPathError, match="--force"):
        pack_small(work, report)
    assert report.read_text() == "mine"


def test_cli_validates_pack_and_verify_options(work, tmp_path):
    runner = CliRunner()
    base = ["pack", str(work), "-o", str(tmp_path / "s"), "--no-progress"]
    for extra, message in (
        (["--quality", "90"], "No such option '--quality'"),
        (["--jpeg-quality", "101"], "--jpeg-quality"),
        (["--jpeg-quality", "0"], "--jpeg-quality"),
        (["--shard-size", "0"], "--shard-size"),
        (["--face-size", "0"], "--face-size"),
    ):
        result = runner.invoke(main, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    result = runner.invoke(main, ["pack", str(work), "-o", str(work), "--no-progress"])
    assert result.exit_code == 1 and "an input of pack" in result.output
    assert result.output.strip().count("\n") == 0
