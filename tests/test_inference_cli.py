"""`deskpro embed / search / export` on a tiny packed synthetic set: the two-command path end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _inference_utils import packed_synthetic, tiny_checkpoint
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.inference.features import arrays_of, read_info
from deskpro.inference.search import queries_from_table, top_k
from deskpro.model.deskpro import retrieval_distance

REPO = Path(__file__).resolve().parents[1]
LOCAL = ["--executor", "local", "--part-size", "7", "--batch-size", "4", "--no-progress"]


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    base = tmp_path_factory.mktemp("inference-cli")
    data = packed_synthetic(base)
    data["checkpoint"] = tiny_checkpoint(base / "checkpoint.pt", data["shards"])
    data["raw"] = base / "raw.parquet"
    data["packed"] = base / "packed.parquet"
    data["raw_out"] = _run(
        "embed", data["manifest"], "--checkpoint", data["checkpoint"], "-o", data["raw"], *LOCAL
    )
    _run("embed", data["shards"], "--checkpoint", data["checkpoint"], "-o", data["packed"], *LOCAL)
    return data


def test_embed_of_raw_images_equals_embed_of_their_shards(embedded) -> None:
    raw, packed = (arrays_of(pq.read_table(embedded[k])) for k in ("raw", "packed"))
    assert list(raw["sample_id"]) == list(packed["sample_id"]) and len(raw["sample_id"]) == 18
    np.testing.assert_array_equal(raw["has_face"], packed["has_face"])
    assert 0 < raw["has_face"].sum() < 18
    np.testing.assert_allclose(raw["body"], packed["body"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(raw["face"], packed["face"], atol=1e-5, rtol=0)
    info = read_info(embedded["raw"])
    assert info["checkpoint_sha256"] == read_info(embedded["packed"])["checkpoint_sha256"]
    assert info["detect"]["backend"] == "oracle" and info["body_size"] == [64, 32]
    assert "18 rows, 15 with a face, 0 errors; parts written 3" in embedded["raw_out"]
    assert not embedded["raw"].with_name("raw.parquet.parts").exists()


def test_embed_refuses_to_replace_its_output_or_an_input(embedded) -> None:
    result = CliRunner().invoke(
        main,
        [
            "embed",
            str(embedded["manifest"]),
            "--checkpoint",
            str(embedded["checkpoint"]),
            "-o",
            str(embedded["raw"]),
            *LOCAL,
        ],
    )
    assert result.exit_code != 0 and "a features table exists; pass --overwrite" in result.output
    result = CliRunner().invoke(
        main,
        [
            "embed",
            str(embedded["manifest"]),
            "--checkpoint",
            str(embedded["checkpoint"]),
            "-o",
            str(embedded["manifest"]),
            *LOCAL,
        ],
    )
    assert result.exit_code != 0 and "is an input of this command" in result.output


def test_chunked_search_equals_a_full_stable_argsort(embedded) -> None:
    queries = queries_from_table(embedded["raw"])
    result = top_k(queries, embedded["packed"], k=6, chunk=5)  # 4 gallery chunks
    g = arrays_of(pq.read_table(embedded["packed"]))
    q = {k: torch.from_numpy(np.asarray(getattr(queries, k))) for k in ("body", "face", "has_face")}
    full = retrieval_distance(
        q, {k: torch.from_numpy(np.array(g[k])) for k in ("body", "face", "has_face")}
    ).numpy()
    order = np.argsort(full, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(result.rows, order)
    np.testing.assert_allclose(result.distances, np.take_along_axis(full, order, 1), atol=1e-6)


def test_search_ranks_rows_and_images_with_json_and_picture(embedded, tmp_path) -> None:
    first = str(pq.read_table(embedded["raw"], columns=["sample_id"]).column(0)[0])
    out = _run(
        "search",
        embedded["raw"],
        f"{embedded['packed']}#{first}",
        embedded["root"] / f"{first}.jpg",
        "-k",
        "3",
        "--json",
        tmp_path / "r.json",
        "--picture",
        tmp_path / "r.png",
    )
    data = json.loads((tmp_path / "r.json").read_text())
    assert [q["query"] for q in data["queries"]] == [first, f"{first}.jpg"]
    for q in data["queries"]:  # the same image: itself first, at distance 0
        assert q["results"][0]["sample_id"] == first and abs(q["results"][0]["distance"]) < 1e-5
        assert [r["rank"] for r in q["results"]] == [1, 2, 3]
    assert f"query {first}" in out and (tmp_path / "r.png").stat().st_size > 0


def test_search_refuses_a_table_of_another_checkpoint(embedded, tmp_path) -> None:
    other = tiny_checkpoint(tmp_path / "other.pt", embedded["shards"], seed=1)
    _run("embed", embedded["shards"], "--checkpoint", other, "-o", tmp_path / "other.parquet", *LOCAL)
    result = CliRunner().invoke(main, ["search", str(embedded["raw"]), str(tmp_path / "other.parquet")])
    assert result.exit_code != 0 and "made with another checkpoint" in result.output


def test_an_interrupted_embed_resumes_from_its_parts(embedded, tmp_path, monkeypatch) -> None:
    from deskpro.inference import embed as embed_module
    from deskpro.pipeline.options import StageRunOptions

    out = tmp_path / "f.parquet"
    run = StageRunOptions(executor="local", part_size=7, progress=False)

    def crash(*args, **kwargs):
        raise ConnectionError("simulated crash after the parts were written")

    monkeypatch.setattr(embed_module, "_join_parts", crash)
    with pytest.raises(ConnectionError):
        embed_module.run_embed(embedded["shards"], embedded["checkpoint"], out, run_options=run)
    assert len(list(out.with_name("f.parquet.parts").glob("part-*.parquet"))) == 3 and not out.exists()
    monkeypatch.undo()
    summary = embed_module.run_embed(embedded["shards"], embedded["checkpoint"], out, run_options=run)
    assert (summary.parts_written, summary.parts_skipped, summary.rows_computed) == (0, 3, 0)
    resumed, whole = (arrays_of(pq.read_table(p)) for p in (out, embedded["packed"]))
    assert list(resumed["sample_id"]) == list(whole["sample_id"])
    np.testing.assert_allclose(resumed["body"], whole["body"], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_embed_on_ray_equals_the_local_loop(embedded, tmp_path) -> None:
    out = tmp_path / "ray.parquet"
    _run(
        "embed",
        embedded["manifest"],
        "--checkpoint",
        embedded["checkpoint"],
        "-o",
        out,
        "--executor",
        "ray",
        "--actors",
        "1",
        "--part-size",
        "7",
        "--batch-size",
        "4",
        "--no-progress",
    )
    ray_rows, local = (arrays_of(pq.read_table(p)) for p in (out, embedded["raw"]))
    assert list(ray_rows["sample_id"]) == list(local["sample_id"])
    np.testing.assert_array_equal(ray_rows["has_face"], local["has_face"])
    np.testing.assert_allclose(ray_rows["body"], local["body"], atol=1e-6, rtol=0)


HOLD_OUTPUT = """
import sys, time
from deskpro.common.locks import output_lock
with output_lock(sys.argv[1], what="embeddings"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_embed_on_the_same_output_is_refused_naming_the_holder(embedded, tmp_path) -> None:
    out = tmp_path / "f.parquet"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OUTPUT, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["embed", embedded["shards"], "--checkpoint", embedded["checkpoint"], "-o", out, *LOCAL]
        result = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"-o {out}: in use by pid {holder.pid} on " in result.output
    assert not out.exists() and not out.with_name("f.parquet.parts").exists()  # nothing written


def test_ctrl_c_during_embed_keeps_the_written_parts_and_a_rerun_resumes(embedded, tmp_path, monkeypatch):
    from deskpro.inference import embed as embed_module

    class CtrlCAfterFirstPart(embed_module.PartCollector):
        def _write(self, part: int) -> None:
            super()._write(part)
            if self.written == 1:
                os.kill(os.getpid(), signal.SIGINT)  # raised by StopSignals' handler, here

    monkeypatch.setattr(embed_module, "PartCollector", CtrlCAfterFirstPart)
    out = tmp_path / "f.parquet"
    args = ["embed", embedded["shards"], "--checkpoint", embedded["checkpoint"], "-o", out, *LOCAL]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert "embed: stopped by SIGINT after writing 1 of 3 missing parts" in result.output
    assert "rerun the same command to resume" in result.output
    parts = out.with_name("f.parquet.parts")
    assert len(list(parts.glob("part-*.parquet"))) == 1 and not out.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.undo()
    resumed = _run(*args)
    assert "parts written 2, skipped 1" in resumed and not parts.exists()
    rows, whole = (arrays_of(pq.read_table(p)) for p in (out, embedded["packed"]))
    assert list(rows["sample_id"]) == list(whole["sample_id"])
    np.testing.assert_allclose(rows["body"], whole["body"], atol=1e-6, rtol=0)
