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

    def trim_log(self, step: int) -> None:
        """Keep the log lines a resume from `step` continues: complete epochs up to that step.

        The line of an epoch that max_iters cut short is dropped; the resumed run writes the whole
        epoch's line, so the log reads as that of an uninterrupted run.
        """
        if not self.log.is_file():
            return
        records = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        kept = [r for r in records if not r.get("partial") and r["step"] <= step]
        with atomic_path(self.log) as tmp:
            Path(tmp).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


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
    inputs=None,
):
    """The plain-data state a resume continues from: epoch `epoch` (0-based) after `batch` batches.

    `partial` holds what a resume mid-epoch also needs (the epoch's augmentation generator state and
    its running loss sums); it is empty at an epoch's end. `threads`: a CPU run's thread count.
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
