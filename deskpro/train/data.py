"""Training data from shards: a batch-reading dataset, its class table, and two identity samplers.

The samplers yield whole batches (lists of dataset positions) and the dataset reads a batch with one
`ShardReader.read_many` call in the loader worker, so HDF5 is opened lazily in each worker process.
With `decode_on="device"` (`resolve_decode_on`) the worker reads the JPEG bytes only
(`ShardDataset.read_jpeg`: one flat buffer per image kind) and the loop decodes each batch on the
training device (`decoded`, `deskpro.shards.device_decode.decode_batch`: nvjpeg on CUDA).
By default samples without a face stay in the batch: the body stream trains on them, and `has_face`
lets the face terms skip them. `drop_faceless` drops them from the training set, as the official
code does (its class count and epoch length follow).

Class numbers: "numeric" sorts the int pids; "official" sorts the pid *strings* as they appear in
the file names (the official relabel, `sorted(pid_container)`), so Celeb-reID's unpadded pids come
in the order 1, 10, 11, 12, 2, ... An explicit table (a teacher's `class_pids`) overrides both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from deskpro.common.threads import apply_threads, worker_init
from deskpro.shards import ShardReader
from deskpro.shards.device_decode import decode_batch
from deskpro.shards.format import IMAGE_KEYS, ShardError

BATCH_KEYS = ("body", "parse", "face_lr", "face_hr", "has_face")
CLASS_ORDERS = ("numeric", "official")
_DIGITS = re.compile(r"\d+")


class ClassTableError(ValueError):
    """A class table (e.g. a teacher's) that does not match the training set."""


def pid_strings(sample_ids: Sequence[str], pids: np.ndarray) -> list[str]:
    """Each pid as its file name spells it: the first digit run of the sample id equal to it.

    "train/10_2_3.jpg" with pid 10 gives "10"; "rgb/train/007/A_1.jpg" with pid 7 gives "007".
    A sample id without such a run (synthetic rows) gives the plain decimal str(pid).
    """
    out = []
    for sample_id, pid in zip(sample_ids, pids.tolist()):
        runs = [r for r in _DIGITS.findall(str(sample_id)) if int(r) == pid]
        out.append(runs[0] if runs else str(pid))
    return out


def class_table(pids: np.ndarray, sample_ids: Sequence[str] | None, order: str) -> np.ndarray:
    """The pids in class order: class c is pid `table[c]`."""
    if order not in CLASS_ORDERS:
        raise ValueError(f"class order must be one of {', '.join(CLASS_ORDERS)}, got {order!r}")
    unique = np.unique(pids)
    if order == "numeric":
        return unique
    names = pid_strings(sample_ids if sample_ids is not None else [""] * len(pids), pids)
    spelled: dict[int, str] = {}
    for pid, name in zip(pids.tolist(), names):
        if spelled.setdefault(pid, name) != name:
            raise ClassTableError(
                f"pid {pid} is spelled both {spelled[pid]!r} and {name!r} in the sample ids"
            )
    return np.asarray(sorted(unique.tolist(), key=lambda p: spelled[p]), dtype=np.int64)


def check_class_table(table, pids: np.ndarray, what: str) -> np.ndarray:
    """`table` as an array, or a one-line ClassTableError when its pids are not the training set's."""
    table = np.asarray(table, dtype=np.int64)
    have, want = set(table.tolist()), set(np.unique(pids).tolist())
    if len(have) != table.size:
        raise ClassTableError(f"{what}: the class table repeats pids")
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        raise ClassTableError(
            f"{what}: classes do not match the training set ({table.size} classes vs {len(want)} train "
            f"pids; not in the training set: {extra[:5]}; not in the table: {missing[:5]})"
        )
    return table


def open_reader(shards):
    """A ShardReader for a directory, or the reader-like object itself."""
    if isinstance(shards, (str, Path)):
        return ShardReader(shards)
    return shards


class ShardDataset(torch.utils.data.Dataset):
    """The rows of one split of a shard set; `dataset[list_of_positions]` reads a whole batch.

    `labels` are dense train labels 0..C-1 and `classes[c]` the pid of class c: `classes` when
    given, else the split's pids in `class_order`. With `require_face` only the rows with a face
    are kept but the classes are those of the whole split (a face-only model shares them); with
    `drop_faceless` faceless rows leave the split before the classes are made (the official
    filter: a pid without any face image has no class). Picklable: it holds the (lazily opening)
    reader and small numpy arrays only.
    """

    def __init__(
        self,
        shards,
        split: str | Sequence[str] = "train",
        *,
        require_face: bool = False,
        drop_faceless: bool = False,
        class_order: str = "numeric",
        classes=None,
        classes_from: str = "class table",
    ):
        self.reader = open_reader(shards)
        index = self.reader.index
        splits = {split} if isinstance(split, str) else set(split)
        split_col = np.asarray(index.column("split").to_pylist(), dtype=object)
        self.rows = np.flatnonzero(np.isin(split_col, list(splits))).astype(np.int64)
        if self.rows.size == 0:
            raise ValueError(f"{_where(self.reader)}: no rows in split {sorted(splits)}")
        has_face = np.asarray(index.column("has_face").to_numpy(), dtype=bool)[self.rows]
        if drop_faceless:
            if not has_face.any():
                raise ValueError(f"{_where(self.reader)}: no sample with a face in split {sorted(splits)}")
            self.rows, has_face = self.rows[has_face], has_face[has_face]
        self.pids = np.asarray(index.column("pid").to_numpy(), dtype=np.int64)[self.rows]
        self.has_face = has_face
        if classes is None:
            ids = index.column("sample_id").to_pylist() if "sample_id" in index.column_names else None
            ids = None if ids is None else [ids[i] for i in self.rows]
            self.classes = class_table(self.pids, ids, class_order)
        else:
            self.classes = check_class_table(classes, self.pids, classes_from)
        self.labels = _labels_of(self.classes, self.pids)
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
        return batch | self._labels(positions)

    def read_jpeg(self, positions) -> dict:
        """The batch `self[positions]` with the images left JPEG (the decode_on=device worker's share).

        batch["jpeg"][key] is (bytes, ends) per image kind: the rows' JPEG bytes in one flat uint8
        tensor and each row's end offset (a faceless row's face is empty), so that a worker hands
        over a few tensors, not one per image. `decoded` turns it into `self[positions]`.
        """
        positions = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        jpeg = self.reader.read_jpeg_many(self.rows[positions])
        packed = {}
        for key in IMAGE_KEYS:
            ends = np.cumsum([len(data) for data in jpeg[key]], dtype=np.int64)
            flat = np.concatenate(jpeg[key]) if jpeg[key] else np.zeros(0, np.uint8)
            packed[key] = (torch.from_numpy(flat.astype(np.uint8, copy=False)), torch.from_numpy(ends))
        batch = {
            "jpeg": packed,
            "parse": torch.from_numpy(np.ascontiguousarray(jpeg["parse"])),
            "has_face": torch.from_numpy(np.asarray(jpeg["has_face"], np.bool_)),
        }
        return batch | self._labels(positions)

    def _labels(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        return {"label": torch.from_numpy(self.labels[positions]), "position": torch.from_numpy(positions)}


class JpegBatches(torch.utils.data.Dataset):
    """A ShardDataset whose batches keep their JPEG bytes (`ShardDataset.read_jpeg`)."""

    def __init__(self, dataset: ShardDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, positions) -> dict:
        return self.dataset.read_jpeg(positions)


def resolve_decode_on(decode_on: str, device, reader) -> str:
    """Where the run decodes its JPEGs, "worker" or "device", from TrainConfig.decode_on.

    auto: on the training device when it is CUDA and the shards are JPEG, else in the workers.
    "device" with shards that hold no JPEG (codec raw) is refused in one line.
    """
    codec = reader.options.get("codec")
    if decode_on == "auto":
        return "device" if torch.device(device).type == "cuda" and codec == "jpeg" else "worker"
    if decode_on == "device" and codec != "jpeg":
        raise ValueError(
            f"--decode-on device: {_where(reader)} has codec {codec!r}, no JPEG bytes to decode on the "
            "device; use --decode-on worker (or auto)"
        )
    return decode_on


def decoded(batch: dict, options: dict, device) -> dict:
    """A loader batch with uint8 NHWC images: a `read_jpeg` batch decoded on `device` with
    `decode_batch` (nvjpeg on CUDA, torchvision's CPU decoder otherwise), any other one unchanged.
    `options` are the reader's (body_size, face_size), the shapes the images must have."""
    if "jpeg" not in batch:
        return batch
    jpeg = {key: _split(*batch["jpeg"][key]) for key in IMAGE_KEYS}
    images = decode_batch(
        jpeg | {"parse": batch["parse"], "has_face": batch["has_face"]}, options["face_size"], device
    )
    for key, want in (("body", tuple(options["body_size"])), ("face_hr", (options["face_size"],) * 2)):
        if tuple(images[key].shape[1:3]) != want:
            raise ShardError(f"decoded {key} images are {tuple(images[key].shape[1:3])}, the shards' {want}")
    return {key: value for key, value in batch.items() if key != "jpeg"} | images


def _split(flat: torch.Tensor, ends: torch.Tensor) -> list[torch.Tensor]:
    bounds = [0, *ends.tolist()]
    return [flat[a:b] for a, b in zip(bounds, bounds[1:])]


def _labels_of(classes: np.ndarray, pids: np.ndarray) -> np.ndarray:
    order = np.argsort(classes, kind="stable")
    return order[np.searchsorted(classes[order], pids)].astype(np.int64)


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
            fits = self.ids.size // world_size
            ranks = f" on {world_size} ranks" if world_size > 1 else ""
            raise ValueError(
                f"--p {p}: the train split has {self.ids.size} identities, too few for {p} per batch"
                f"{ranks}; give --p {fits} or fewer"
                + ("" if fits >= 2 else " (at least 2), or more identities")
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


class OfficialIdentitySampler(PKBatchSampler):
    """The official RandomIdentitySampler's epoch rule (data/sampler.py), seeded from (seed, epoch).

    Each identity's images (in row order; drawn with replacement up to K when it has fewer) are
    shuffled and cut into chunks of K, the remainder dropped. While at least P identities have
    chunks left, P of them are drawn uniformly and each gives its next chunk; the chunks left then
    are dropped. So the epoch length varies from epoch to epoch and rare identities weigh less than
    in `PKBatchSampler`. With DDP rank r takes batches r, r + world, ... (equal counts per rank).
    """

    def _epoch_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 4099])
        chunks: dict[int, list[np.ndarray]] = {}
        first_seen = np.unique(self.labels, return_index=True)[1]
        for id_number in np.argsort(first_seen, kind="stable"):  # identities in first-appearance order
            members = self.members[id_number]
            if members.size < self.k:
                members = rng.choice(members, size=self.k, replace=True)
            picked = rng.permutation(members)
            chunks[int(id_number)] = [
                picked[j * self.k : (j + 1) * self.k] for j in range(len(picked) // self.k)
            ]
        available = list(chunks)
        batches = []
        while len(available) >= self.p:
            chosen = rng.choice(len(available), size=self.p, replace=False)
            ids = [available[c] for c in chosen]
            batches.append([int(x) for i in ids for x in chunks[i].pop(0)])
            available = [i for i in available if chunks[i]]
        return batches

    def __len__(self) -> int:
        return len(self._epoch_batches()) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        length = len(batches) // self.world_size
        yield from batches[self.rank :: self.world_size][:length]


def make_loader(
    dataset: ShardDataset,
    sampler: PKBatchSampler,
    *,
    workers: int = 2,
    pin_memory: bool = False,
    decode_on: str = "worker",
    threads: int | None = None,
) -> torch.utils.data.DataLoader:
    """A loader whose items are whole batches: each worker reads one batch with `read_many`, or
    with decode_on="device" its JPEG bytes (`read_jpeg`; the loop decodes them with `decoded`).

    Threads: each worker computes on one thread, and this process keeps `threads`, else the CPUs the
    workers and the machine's load leave (`deskpro.common.threads`; `--threads` overrides).
    """
    apply_threads(workers, requested=threads)
    return torch.utils.data.DataLoader(
        JpegBatches(dataset) if decode_on == "device" else dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=worker_init if workers > 0 else None,
    )
