"""Test helpers for the trainer tests: a tiny in-memory stand-in for ShardReader, and tiny shard sets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class FakeReader:
    """ShardReader's read interface over generated arrays; pixel values encode the row number."""

    def __init__(self, pids, *, split="train", body_size=(16, 8), face_size=8, has_face=None, seed=0):
        n = len(pids)
        rng = np.random.default_rng(seed)
        self.has_face_col = np.ones(n, bool) if has_face is None else np.asarray(has_face, bool)
        self.index = pa.table(
            {
                "sample_id": [f"s{i}" for i in range(n)],
                "pid": pa.array(np.asarray(pids, np.int64)),
                "camid": pa.array(np.zeros(n, np.int64)),
                "clothes_id": pa.array(np.zeros(n, np.int64)),
                "split": [split] * n,
                "subset": [split] * n,
                "has_face": pa.array(self.has_face_col),
            }
        )
        h, w = body_size
        self.body = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        self.parse = rng.integers(0, 20, (n, h, w), dtype=np.uint8)
        self.face = rng.integers(0, 256, (n, face_size, face_size, 3), dtype=np.uint8)
        self.face[~self.has_face_col] = 0
        self.options = {"body_size": list(body_size), "face_size": face_size}
        self.meta = {"dataset": "synthetic", "label_set": "lip"}

    def __len__(self):
        return self.index.num_rows

    def read_many(self, indices):
        idx = np.asarray(indices)
        return {
            "body": self.body[idx],
            "parse": self.parse[idx],
            "face_lr": self.face[idx],
            "face_hr": 255 - self.face[idx],
            "has_face": self.has_face_col[idx],
        }


def write_tiny_shards(
    out_dir,
    *,
    train_ids=4,
    per_id=4,
    test_ids=3,
    val_ids=0,
    body_size=(64, 32),
    face_size=32,
    seed=0,
    dataset="synthetic",
    codec="raw",
    clothes_known=True,
):
    """A tiny PRCC-layout shard set: train rows, test rows (gallery A, query_same B, query_diff C) and
    optionally val rows (split "val", the same three subsets).

    Each identity has its own colour on the head region and a clothes colour per camera group,
    so that the body images carry learnable identity signal. Every third train sample has no face.
    `codec` is the shards' image codec ("raw", or "jpeg" for the decode_on tests). clothes_known
    False writes clothes_id -1 everywhere (a layout without clothes labels, as Celeb-reID).
    """
    from deskpro.shards import ShardWriter

    rng = np.random.default_rng(seed)
    h, w = body_size
    id_colours = rng.integers(0, 256, (train_ids + test_ids + val_ids, 3))
    with ShardWriter(
        out_dir,
        body_size=body_size,
        face_size=face_size,
        codec=codec,
        shard_size=16,
        meta={"dataset": dataset, "label_set": "lip"},
    ) as writer:
        n = 0
        rows = [("train", "train", pid, cam) for pid in range(train_ids) for cam in range(per_id)]
        for pid in range(train_ids, train_ids + test_ids + val_ids):
            val = pid >= train_ids + test_ids
            rows += [
                ("val" if val else "gallery", "gallery", pid, 0),
                ("val" if val else "query", "query_same", pid, 1),
                ("val" if val else "query", "query_diff", pid, 2),
            ]
        for split, subset, pid, cam in rows:
            clothes = pid * 2 + (1 if cam == 2 else 0) if clothes_known else -1
            body = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
            body[: h // 4] = id_colours[pid]
            body[h // 4 :] = (
                (id_colours[pid] * 0.3 + rng.integers(0, 180, 3)).astype(np.uint8) if cam == 2 else 90
            )
            parse = np.zeros((h, w), np.uint8)
            parse[: h // 4] = 13  # face
            parse[h // 4 : h // 2] = 5  # upper clothes
            parse[h // 2 :] = 9  # pants
            has_face = not (split == "train" and n % 3 == 2)
            face = np.full((face_size, face_size, 3), id_colours[pid], np.uint8) if has_face else None
            writer.add(
                sample_id=f"{split}/{pid}/{cam}/{n}",
                pid=pid,
                camid=cam,
                clothes_id=clothes,
                split=split,
                subset=subset,
                body=body,
                parse=parse,
                face_lr=face,
                face_hr=None if face is None else face.copy(),
            )
            n += 1
    return out_dir
