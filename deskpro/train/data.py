"""Training data from shards: a batch-reading dataset and a seeded, DDP-aware P x K identity sampler.

The sampler yields whole batches (lists of dataset positions) and the dataset reads a batch with one
`ShardReader.read_many` call in the loader worker, so HDF5 is opened lazily in each worker process.
Samples without a face stay in the batch: the body stream trains on them, and `has_face` lets the
face terms skip them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from deskpro.common.threads import apply_threads, worker_init

BATCH_KEYS = ("body", "parse", "face_lr", "face_hr", "has_face")


def open_reader(shards):
    """A ShardReader for a directory, or the reader-like object itself."""
    if isinstance(shards, (str, Path)):
        from deskpro.pipeline.shards import ShardReader

        return ShardReader(shards)
    return shards


class ShardDataset(torch.utils.data.Dataset):
    """The rows of one split of a shard set; `dataset[list_of_positions]` reads a whole batch.

    `labels` are dense train labels: the split's pids sorted, numbered 0..C-1 (over the whole split,
    also with `require_face`, which keeps only the rows with a face). Picklable: it holds the
    (lazily opening) reader and small numpy arrays only.
    """

    def __init__(self, shards, split: str | Sequence[str] = "train", *, require_face: bool = False):
        self.reader = open_reader(shards)
        index = self.reader.index
        splits = {split} if isinstance(split, str) else set(split)
        split_col = np.asarray(index.column("split").to_pylist(), dtype=object)
        self.rows = np.flatnonzero(np.isin(split_col, list(splits))).astype(np.int64)
        if self.rows.size == 0:
            raise ValueError(f"{_where(self.reader)}: no rows in split {sorted(splits)}")
        self.pids = np.asarray(index.column("pid").to_numpy(), dtype=np.int64)[self.rows]
        self.classes = np.unique(self.pids)  # sorted
        self.labels = np.searchsorted(self.classes, self.pids).astype(np.int64)
        self.has_face = np.asarray(index.column("has_face").to_numpy(), dtype=bool)[self.rows]
        if require_face:
            # Keep the labels of the whole split, so that a face-only model shares its classes.
            keep = self.has_face
            if not keep.any():
                raise ValueError(f"{_where(self.reader)}: no sample with a face in split {sorted(splits)}")
            self.rows, self.pids = self.rows[keep], self.pids[keep]
            self.labels, self.has_face = self.labels[keep], self.has_face[keep]

    @property
    def num_classes(self) -> int:
        return int(self.classes.size)

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        positions = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        arrays = self.reader.read_many(self.rows[positions])
        batch = {key: torch.from_numpy(np.ascontiguousarray(arrays[key])) for key in BATCH_KEYS}
        batch["has_face"] = batch["has_face"].bool()
        batch["label"] = torch.from_numpy(self.labels[positions])
        batch["position"] = torch.from_numpy(positions)
        return batch


def _where(reader) -> str:
    """The reader's directory, for error messages."""
    return str(getattr(reader, "shards_dir", getattr(reader, "root", "shards")))


class PKBatchSampler(torch.utils.data.Sampler):
    """Batches of P identities x K images, seeded from (seed, epoch), split across DDP ranks.

    Each epoch every identity's images are shuffled and cut into chunks of K (drawn with
    replacement when it has fewer than K). A batch takes one chunk from each of P distinct
    identities, drawn with probability proportional to their chunks left; an identity whose chunks
    ran out gets a fresh shuffle, so the epoch length is exact and known in advance:
    min over ranks of (chunks on the rank) // P. With DDP the identities are dealt out to the ranks
    (a seeded permutation per epoch), so ranks see disjoint identities and equal batch counts.
    """

    def __init__(self, labels, p: int, k: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if p < 1 or k < 1:
            raise ValueError(f"PKBatchSampler: p and k must be >= 1, got p={p}, k={k}")
        if not 0 <= rank < world_size:
            raise ValueError(f"PKBatchSampler: rank {rank} outside world size {world_size}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.ids = np.unique(self.labels)
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], self.ids, side="left")
        self.members = np.split(order, bounds[1:])  # positions of each id, in id order
        if self.ids.size < p * world_size:
            raise ValueError(
                f"PKBatchSampler: {self.ids.size} identities cannot fill P={p} per batch "
                f"on {world_size} rank(s)"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])

    def _rank_ids(self, rank: int) -> np.ndarray:
        """Identity numbers (into self.ids) dealt to one rank this epoch."""
        if self.world_size == 1:
            return np.arange(self.ids.size)
        perm = np.random.default_rng([self.seed, self.epoch, 7919]).permutation(self.ids.size)
        return np.sort(perm[rank :: self.world_size])

    def _chunks(self, id_number: int) -> int:
        return max(1, self.members[id_number].size // self.k)

    def __len__(self) -> int:
        per_rank = [sum(self._chunks(i) for i in self._rank_ids(r)) // self.p for r in range(self.world_size)]
        return int(min(per_rank))

    def _deal(self, rng: np.random.Generator, id_number: int) -> list[np.ndarray]:
        members = self.members[id_number]
        if members.size < self.k:
            picked = rng.choice(members, size=self.k, replace=True)
        else:
            picked = rng.permutation(members)
        return [picked[j * self.k : (j + 1) * self.k] for j in range(len(picked) // self.k)]

    def __iter__(self) -> Iterator[list[int]]:
        length = len(self)
        ids = self._rank_ids(self.rank)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        chunks = {int(i): self._deal(rng, int(i)) for i in ids}
        for _ in range(length):
            left = np.array([len(chunks[int(i)]) for i in ids], dtype=np.float64)
            if np.count_nonzero(left) < self.p:
                for i in ids[left == 0]:
                    chunks[int(i)] = self._deal(rng, int(i))
                left = np.array([len(chunks[int(i)]) for i in ids], dtype=np.float64)
            chosen = rng.choice(ids, size=self.p, replace=False, p=left / left.sum())
            yield [int(x) for i in chosen for x in chunks[int(i)].pop()]


def make_loader(
    dataset: ShardDataset, sampler: PKBatchSampler, *, workers: int = 2, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A loader whose items are whole batches: each worker reads one batch with `read_many`.

    Threads: each worker computes on one thread, and this process keeps the CPUs the workers leave
    (`deskpro.common.threads`; `--threads` overrides).
    """
    apply_threads(workers)
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=worker_init if workers > 0 else None,
    )
