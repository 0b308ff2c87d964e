"""The run directory of one training run: what it holds, and how it is checked, written and resumed.

    RUN/config.json      the resolved TrainConfig (also accepted back by `deskpro train --config`)
    RUN/checkpoint.pt    our checkpoint of the latest model (deskpro.model.checkpoint format)
    RUN/best.pt          the best val epoch, with select_on_val
    RUN/train_state.pt   everything a resume needs (loads with weights_only=True)
    RUN/log.jsonl        one JSON line per epoch, and one marked "partial" where max_iters stopped
    RUN/tensorboard/     the same scalars for TensorBoard, when asked for

Every file is replaced atomically, and train_state.pt is written before the log line that it
covers, so a run killed at any point resumes from a consistent state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from deskpro.common.files import atomic_path
from deskpro.common.torch_utils import torch_load_weights
from deskpro.config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from deskpro.model import checkpoint

CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
STATE_NAME = "train_state.pt"
LOG_NAME = "log.jsonl"
TENSORBOARD_NAME = "tensorboard"
RUN_NAMES = frozenset({CONFIG_NAME, CHECKPOINT_NAME, BEST_NAME, STATE_NAME, LOG_NAME, TENSORBOARD_NAME})
# Settings that may change on resume without changing what is learnt (how, not what, is computed).
# Everything else (epochs, warm-up, lr, P, K, seed, the losses...) shapes the schedule or the data
# order, so a resume with a new value would silently train a different run: it is refused.
RUNTIME_FIELDS = ("amp", "channels_last", "compile", "num_workers", "decode_on")
TENSORBOARD_EXTRA = "deskpro[tensorboard]"
_log = logging.getLogger(__name__)


def check_tensorboard() -> None:
    """Raise ImportError (one line naming the extra) unless TensorBoard's writer can be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ImportError(
            f"--tensorboard needs the tensorboard package: pip install '{TENSORBOARD_EXTRA}'"
        ) from None


class RunDir:
    """The files of one run directory (see the module docstring). Only the main rank writes."""

    def __init__(self, path):
        self.path = Path(path)
        self.config = self.path / CONFIG_NAME
        self.checkpoint = self.path / CHECKPOINT_NAME
        self.best = self.path / BEST_NAME
        self.state = self.path / STATE_NAME
        self.log = self.path / LOG_NAME
        self.tensorboard = self.path / TENSORBOARD_NAME

    def check(self, resume: bool) -> None:
        """Refuse, before anything is written, a run directory this run must not use.

        A new run needs a missing or empty folder, or one holding only run files but no state (a
        run that stopped before its first checkpoint); a resume needs RUN/train_state.pt.
        """
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path}: is a file, not a run directory")
        if resume:
            if not self.state.is_file():
                raise FileNotFoundError(f"{self.state}: no training state to resume from")
            return
        if self.state.exists():
            raise FileExistsError(
                f"{self.path}: already holds a run ({STATE_NAME}); resume it (--resume) or use another -o"
            )
        foreign = (
            sorted(p.name for p in self.path.iterdir() if p.name not in RUN_NAMES)
            if self.path.is_dir()
            else []
        )
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise FileExistsError(
                f"{self.path}: exists and is not a deskpro run (holds {shown}); give a new or empty folder"
            )

    def check_finished(self, saved: dict, epochs: int, select_on_val: bool) -> None:
        """A resume of a finished run whose final checkpoint is gone: refused (nothing to train)."""
        final = self.best if select_on_val else self.checkpoint
        if int(saved["epoch"]) >= epochs and not final.is_file():
            raise FileNotFoundError(
                f"{final}: missing, and the run had finished ({epochs} epochs): nothing to resume; "
                f"start a new run with another -o"
            )

    def load_state(self) -> dict:
        """RUN/train_state.pt, loaded with weights_only=True; a clear error when absent."""
        if not self.state.is_file():
            raise FileNotFoundError(f"{self.state}: no training state to resume from")
        return torch_load_weights(self.state, "training state")

    def save_state(self, state: dict) -> None:
        with atomic_path(self.state) as tmp:
            torch.save(state, tmp)

    def write_config(self, config: TrainConfig) -> None:
        with atomic_path(self.config) as tmp:
            Path(tmp).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")

    def append_log(self, record: dict) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def trim_log(self, step: int, last: dict | None = None) -> None:
        """Keep the log lines a resume from `step` continues: complete epochs up to that step.

        The line of an epoch that max_iters cut short is dropped; the resumed run writes the whole
        epoch's line, so the log reads as that of an uninterrupted run. A torn last line (a kill
        during an append) is dropped too, with a warning; `last`, the line the saved state was
        written for (train_state.pt holds it), is put back when it is missing.
        """
        records = read_log(self.log) if self.log.is_file() else []
        kept = [r for r in records if not r.get("partial") and r["step"] <= step]
        if (
            last
            and not last.get("partial")
            and last["step"] <= step
            and last["step"] not in {r["step"] for r in kept}
        ):
            kept.append(last)
        if not kept and not self.log.is_file():
            return
        with atomic_path(self.log) as tmp:
            Path(tmp).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def read_log(path) -> list[dict]:
    """The records of a log.jsonl. A torn last line (the process was killed while appending it) is
    left out with a warning; a bad line before the last is a ValueError naming the file and line."""
    path = Path(path)
    lines = path.read_text(errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record or "epoch" not in record:
                raise ValueError("not a log record")
        except ValueError:
            if all(not rest.strip() for rest in lines[number:]):
                _log.warning(f"{path}: line {number} is torn (a kill while it was written); left out")
                continue
            raise ValueError(f"{path}: line {number} is not a log record; the log is damaged") from None
        records.append(record)
    return records


def data_record(reader, classes) -> dict:
    """What a run trains on, kept in its train_state.pt: the shard set's catalog checksum, class
    table (class -> pid) and image sizes."""
    return {
        "catalog_checksum": reader.catalog.get("checksum"),
        "classes": [int(pid) for pid in classes],
        "body_size": [int(v) for v in reader.options["body_size"]],
        "face_size": int(reader.options["face_size"]),
        "rows": len(reader),
    }


def check_same_data(saved: dict | None, current: dict, state_path: Path, shards_dir) -> None:
    """Refuse, in one line, a resume on other shards than the run trained on (a state written
    before runs kept this record is not checked)."""
    if not saved:
        return
    diffs = []
    for key, what in (("body_size", "body size"), ("face_size", "face size")):
        if saved.get(key) != current[key]:
            diffs.append(f"{what} {saved.get(key)} -> {current[key]}")
    if saved.get("classes") != current["classes"]:
        diffs.append(f"class table of {len(saved.get('classes') or [])} ids -> {len(current['classes'])} ids")
    if not diffs and saved.get("catalog_checksum") != current["catalog_checksum"]:
        diffs.append("another catalog (checksum differs)")
    if diffs:
        raise ValueError(
            f"{state_path}: this run trained on other shards than {shards_dir} ({'; '.join(diffs)}); "
            "resume it on the shards it was trained on, or start a new run with another -o"
        )


def resume_config(saved: dict, config: TrainConfig, state_path: Path) -> TrainConfig:
    """The saved config, with only the runtime fields taken from the new one.

    A changed setting that shapes the run (epochs, warmup_epochs, base_lr, p, k, seed, ...) is
    refused in one line naming each change: the lr schedule and the sampler's epochs were built from
    the saved values, and continuing under new ones would train neither run.
    """
    old = TrainConfig.from_dict(saved)
    changed = [
        f"{f.name} {getattr(old, f.name)!r} -> {getattr(config, f.name)!r}"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RUNTIME_FIELDS and getattr(old, f.name) != getattr(config, f.name)
    ]
    if changed:
        raise ValueError(
            f"{state_path}: cannot resume with changed settings: {'; '.join(changed)} "
            "(only amp, channels_last, compile, workers and decode_on may change; "
            "start a new run with another -o)"
        )
    return dataclasses.replace(old, **{name: getattr(config, name) for name in RUNTIME_FIELDS})


def save_checkpoint(path: Path, module, config: TrainConfig, dataset, reader, extra: dict) -> None:
    """Our checkpoint (`deskpro.model.checkpoint`) of the module a phase trained, with its config and
    the training set's class -> pid table."""
    preprocessing = {
        "body_size": list(config.body_size),
        "face_size": config.face_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "label_set": config.label_set,
        "shards_meta": json.loads(json.dumps(reader.meta, default=str)),
    }
    checkpoint.save(
        path,
        module,
        config=config.to_dict(),
        num_classes=dataset.num_classes,
        class_pids=dataset.classes.tolist(),
        preprocessing=preprocessing,
        extra=extra,
    )


class ScalarLogger:
    """TensorBoard scalars of the log records (the writer is imported only when asked for)."""

    def __init__(self, run: RunDir, tensorboard: bool):
        self.writer = None
        if tensorboard:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.tensorboard))

    def write(self, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and key not in ("epoch", "step")
            ):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def training_state(
    *,
    epoch,
    batch,
    step,
    config,
    model,
    optimizer,
    scheduler,
    sampler,
    scaler,
    best,
    partial,
    threads=None,
    data=None,
    log_record=None,
    inputs=None,
):
    """The plain-data state a resume continues from: epoch `epoch` (0-based) after `batch` batches.

    `partial` holds what a resume mid-epoch also needs (the epoch's augmentation generator state and
    its running loss sums); it is empty at an epoch's end. `threads`: a CPU run's thread count.
    `data`: `data_record` of the shards; `log_record`: the log line this state is saved for.
    `inputs`: the shards and teacher paths, so that `--resume` needs neither repeated.
    """
    return {
        "epoch": epoch,
        "batch": batch,
        "step": step,
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "best": best,
        "partial": partial,
        "threads": threads,
        "data": data,
        "log_record": log_record,
        "inputs": inputs or {},
    }


def restore_training_state(state: dict, *, model, optimizer, scheduler, sampler, scaler) -> None:
    """Load a `training_state` into the freshly built objects, and the global RNG states."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
