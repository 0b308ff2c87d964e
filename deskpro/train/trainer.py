"""The training loop: face teacher, DeSKPro, or the global-stream baseline, from training shards.

Phases (`TrainConfig.phase`):
- "teacher": the face teacher (`face_net`, a LightMBN) on restored faces (face_hr), CE with label
  smoothing + batch-hard triplet, on the samples that have a face.
- "deskpro": global stream + student on face_lr with the frozen teacher on face_hr, Eq. 7
  (`deskpro.model.losses.deskpro_loss`); samples without a face train the body stream only.
- "baseline": the global stream alone (CE + triplet), no attention loss, no face streams.

Each epoch writes `RUN/checkpoint.pt` (our checkpoint format, with the resolved config),
`RUN/train_state.pt` (model, optimiser, scheduler, sampler and RNG state; loads with
weights_only=True) and a line of `RUN/log.jsonl`. `resume=True` continues from train_state.pt
exactly. Under DDP only rank 0 writes. No model selection on the test split: the last epoch is the
result, or the best epoch on the val split with `select_on_val`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deskpro.common.files import atomic_path
from deskpro.common.torch_utils import autocast_context, torch_load_weights
from deskpro.common.torch_utils import resolve_device as _resolve_device_name  # returns a str
from deskpro.config import CLOTH_LABELS, IMAGENET_MEAN, IMAGENET_STD, TrainConfig, preset
from deskpro.train import recipe  # recipe hook: dataset, sampler, draws, init rules per --recipe
from deskpro.train.data import make_loader, open_reader
from deskpro.train.schedule import warmup_cosine
from deskpro.train.transforms import augment_batch

PHASES = ("teacher", "deskpro", "baseline")
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
STATE_NAME = "train_state.pt"
LOG_NAME = "log.jsonl"
SHOWN_TERMS = ("total", "ce", "triplet", "att", "fkp", "ce_body", "ce_face")
# Settings that may change on resume without changing the result (how, not what, is computed).
RUNTIME_FIELDS = ("amp", "channels_last", "compile", "num_workers", "epochs")


@dataclass(frozen=True)
class TrainRunOptions:
    """How to run (not what to learn): device, limits, resume, logging, DDP."""

    device: str = "cpu"
    teacher: str | None = None  # teacher checkpoint for phase "deskpro" (ours or the official file)
    imagenet: str | None = None  # OSNet x1.0 ImageNet weights to initialise the trained streams
    max_iters: int | None = None  # stop after this many iterations in all (tests, demo); the epoch
    # it stops in is checkpointed as done, so resume is exact only when it falls on an epoch's end
    resume: bool = False
    select_on_val: bool = False
    progress: bool = True
    tensorboard: bool = False
    distributed: bool = False  # init torch.distributed from torchrun's environment (env://)
    local_rank: int = 0
    trust_checkpoint: bool = False
    from_scratch: bool = False  # recipe hook: allow a real-dataset run without --imagenet


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call initialised torch.distributed, so it tears it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_config(shards_dir, phase: str, **overrides) -> TrainConfig:
    """`TrainConfig.for_dataset` for the shards' dataset, sizes and label set, then the overrides."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    reader = open_reader(shards_dir)
    dataset = reader.meta.get("dataset")
    if not dataset:
        raise ValueError(f"{shards_dir}: catalog.json meta has no 'dataset'; cannot choose the settings")
    base = {
        "phase": phase,
        "body_size": tuple(int(v) for v in reader.options["body_size"]),
        "face_size": int(reader.options["face_size"]),
        "label_set": reader.meta.get("label_set") or preset(dataset).label_set,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.for_dataset(dataset, **base)


# ---------------------------------------------------------------- setup helpers


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as torch.device."""
    return torch.device(_resolve_device_name(device))


def _setup_dist(options: TrainRunOptions) -> _Dist:
    if not options.distributed:
        return _Dist(device=resolve_device(options.device))
    import torch.distributed as dist

    cuda = resolve_device(options.device).type == "cuda"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    device = torch.device("cuda", options.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return _Dist(dist.get_rank(), dist.get_world_size(), device, owns)


def _build_model(config: TrainConfig, num_classes: int, options: TrainRunOptions, teacher=None):
    """A DeSKPro model initialised from config.seed (and ImageNet OSNet weights when given)."""
    from deskpro.model.deskpro import DeSKPro, freeze_teacher
    from deskpro.model.osnet import load_imagenet

    recipe.check_init(config, options.imagenet, options.from_scratch)  # recipe hook
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = DeSKPro(num_classes, csa_form=config.csa_form)
    if options.imagenet:
        for module in _phase_modules(model, config.phase):
            load_imagenet(module, options.imagenet)
    if config.phase == "deskpro":
        from deskpro.model.checkpoint import load_teacher

        if teacher is None:
            teacher = recipe.teacher_file(config, options.teacher, options.trust_checkpoint)
        load_teacher(model, teacher)  # recipe hook: the file read once by recipe.teacher_file
        freeze_teacher(model, config.teacher_mode)  # recipe hook: --teacher-mode
    return model


def _trained_module(model, phase: str):
    """The sub-module whose parameters a phase optimises (and that DDP wraps)."""
    return model.face_net if phase == "teacher" else model


def _phase_modules(model, phase: str) -> list[torch.nn.Module]:
    """The streams a phase trains: ImageNet-initialised and optimised."""
    return {
        "teacher": [model.face_net],
        "deskpro": [model.nocloth_net, model.lr_face_net],
        "baseline": [model.nocloth_net],
    }[phase]


def _trainable_parameters(model, phase: str) -> list[torch.nn.Parameter]:
    return [p for m in _phase_modules(model, phase) for p in m.parameters() if p.requires_grad]


def _amp_context(amp: str | None, device: torch.device):
    """`autocast_context` for the config's amp ("none" or None: full precision)."""
    return autocast_context(device, None if amp in ("none", None) else amp)


def _epoch_generator(config: TrainConfig, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The augmentation generator of one epoch: seeded from (seed, epoch, rank), so resume is exact."""
    seed = int(np.random.default_rng([config.seed, epoch, rank, 17]).integers(0, 2**62))
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------- one step


def _loss_terms(forward_model, batch: dict, config: TrainConfig) -> dict:
    """The phase's loss terms (scalars; "total" is optimised) for one augmented batch."""
    from deskpro.model.losses import deskpro_loss, reid_loss

    if config.phase == "teacher":
        out = forward_model(batch["face_hr"])
        return reid_loss(
            out, batch["label"], label_smoothing=config.label_smoothing, margin=config.triplet_margin
        )
    settings = config.method
    if config.phase == "baseline":
        out = forward_model(batch["body"])
        settings = dataclasses.replace(settings, lam=0.0)
    else:
        out = forward_model(
            batch["body"], face_lr=batch["face_lr"], face_hr=batch["face_hr"], face_mask=batch["has_face"]
        )
    return deskpro_loss(
        out,
        batch["label"],
        batch["parse"],
        settings=settings,
        cloth_labels=CLOTH_LABELS[config.label_set],
        face_mask=batch["has_face"],
        label_smoothing=config.label_smoothing,
        margin=config.triplet_margin,
    )


def _step(forward_model, batch, config, optimizer, scaler, device) -> dict[str, float]:
    with _amp_context(config.amp, device):
        terms = _loss_terms(forward_model, batch, config)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(terms["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        terms["total"].backward()
        optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


# ---------------------------------------------------------------- state, checkpoints, logs


def _state_path(run_dir: Path) -> Path:
    return run_dir / STATE_NAME


def _save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _train_state(epoch, step, model, optimizer, scheduler, sampler, scaler, config) -> dict:
    return {
        "epoch": epoch,
        "step": step,
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def load_train_state(run_dir) -> dict:
    """RUN/train_state.pt, loaded with weights_only=True; a clear error when absent."""
    path = _state_path(Path(run_dir))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from")
    return torch_load_weights(path, "training state")


def _resume_config(saved: dict, config: TrainConfig, run_dir: Path) -> TrainConfig:
    """The saved config, with only the runtime fields taken from the new one."""
    old = TrainConfig.from_dict(saved)
    changed = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RUNTIME_FIELDS and getattr(old, f.name) != getattr(config, f.name)
    ]
    if changed:
        raise ValueError(f"{run_dir / STATE_NAME}: cannot resume with changed settings: {', '.join(changed)}")
    return dataclasses.replace(old, **{name: getattr(config, name) for name in RUNTIME_FIELDS})


def _restore(state, model, optimizer, scheduler, sampler, scaler) -> tuple[int, int]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["epoch"]), int(state["step"])


def _preprocessing(config: TrainConfig, reader) -> dict:
    return {
        "body_size": list(config.body_size),
        "face_size": config.face_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "label_set": config.label_set,
        "shards_meta": json.loads(json.dumps(reader.meta, default=str)),
    }


def _save_checkpoint(path: Path, model, config, dataset, reader, extra: dict) -> None:
    """Our checkpoint of what the phase trained: the teacher LightMBN alone, else the DeSKPro model."""
    from deskpro.model import checkpoint

    checkpoint.save(
        path,
        _trained_module(model, config.phase),
        config=config.to_dict(),
        num_classes=dataset.num_classes,
        class_pids=dataset.classes.tolist(),  # recipe hook: the class -> pid table
        preprocessing=_preprocessing(config, reader),
        extra=extra,
    )


class _Logger:
    """JSON lines in RUN/log.jsonl, and TensorBoard scalars when asked for (imported lazily)."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / LOG_NAME
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("--tensorboard needs the tensorboard package (not installed)") from None

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------- the loop


def _run_epoch(epoch, forward_model, loader, sampler, config, optimizer, scaler, dist, options, step):
    """One epoch; returns (mean loss terms, iterations done, images per second)."""
    sampler.set_epoch(epoch)
    generator = _epoch_generator(config, epoch, dist.rank, dist.device)
    settings = recipe.augment_settings(config)
    draws = recipe.draws_of_epoch(config, generator, dist.device)  # recipe hook: per sample / per worker
    sums: dict[str, float] = {}
    done, images, start = 0, 0, time.perf_counter()
    bar = tqdm(
        total=len(sampler),
        desc=f"{config.phase} {epoch + 1}/{config.epochs}",
        disable=not (options.progress and dist.main),
        leave=False,
    )
    for raw in loader:
        if options.max_iters is not None and step + done >= options.max_iters:
            break
        batch = augment_batch(
            raw,
            settings=settings,
            device=dist.device,
            channels_last=config.channels_last,
            draws=draws.for_batch(done, len(raw["label"])),
        )
        terms = _step(forward_model, batch, config, optimizer, scaler, dist.device)
        if not math.isfinite(terms["total"]):
            raise FloatingPointError(f"{config.phase} epoch {epoch + 1}: loss is {terms['total']}")
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
        done += 1
        images += len(raw["label"])
        rate = images / max(time.perf_counter() - start, 1e-9)
        shown = {k: f"{v:.3f}" for k, v in terms.items() if k in SHOWN_TERMS}
        bar.set_postfix(shown | {"img/s": f"{rate:.1f}"})
        bar.update()
    bar.close()
    means = {k: v / max(done, 1) for k, v in sums.items()}
    return means, done, images / max(time.perf_counter() - start, 1e-9)


def train(shards_dir, run_dir, config: TrainConfig, options: TrainRunOptions = TrainRunOptions()) -> Path:
    """Train one phase from the shards into run_dir; returns the path of the final checkpoint.

    The final checkpoint is RUN/checkpoint.pt (last epoch), or RUN/best.pt with select_on_val.
    """
    if config.phase not in PHASES:
        raise ValueError(f"unknown phase {config.phase!r}; expected one of {', '.join(PHASES)}")
    if options.select_on_val and config.phase == "teacher":
        raise ValueError("--select-on-val is for the body / DeSKPro phases (evaluation uses the student)")
    _amp_context(config.amp, resolve_device(options.device))  # fail now on an amp the device cannot run
    run_dir = Path(run_dir)
    dist = _setup_dist(options)
    if not options.resume and _state_path(run_dir).exists():
        raise FileExistsError(f"{run_dir}: already holds a run ({STATE_NAME}); resume it or use another -o")
    saved = load_train_state(run_dir) if options.resume else None
    if saved is not None:
        config = _resume_config(saved["config"], config, run_dir)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    reader = open_reader(shards_dir)
    teacher = recipe.teacher_file(config, options.teacher, options.trust_checkpoint)  # recipe hook
    dataset = recipe.train_dataset(reader, config, teacher)  # recipe hook: faceless rows, class table
    model = _build_model(config, dataset.num_classes, options, teacher).to(dist.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        _trainable_parameters(model, config.phase), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = warmup_cosine(
        optimizer, epochs=config.epochs, warmup_epochs=config.warmup_epochs, min_factor=config.min_lr_factor
    )
    sampler = recipe.make_sampler(config, dataset.labels, dist.rank, dist.world_size)  # recipe hook
    scaler = torch.amp.GradScaler(dist.device.type) if config.amp == "fp16" else None
    start_epoch, step = 0, 0
    if saved is not None:
        start_epoch, step = _restore(saved, model, optimizer, scheduler, sampler, scaler)
    forward_model = _wrap(model, config, dist)
    loader = make_loader(dataset, sampler, workers=config.num_workers, pin_memory=dist.device.type == "cuda")
    logger = _Logger(run_dir, options.tensorboard) if dist.main else None
    best = -1.0 if saved is None else float(saved.get("best", -1.0))
    final = run_dir / (BEST_NAME if options.select_on_val else CHECKPOINT_NAME)
    try:
        for epoch in range(start_epoch, config.epochs):
            if options.max_iters is not None and step >= options.max_iters:
                break
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            means, done, rate = _run_epoch(
                epoch, forward_model, loader, sampler, config, optimizer, scaler, dist, options, step
            )
            step += done
            scheduler.step()
            if not dist.main:
                continue
            record = {"epoch": epoch + 1, "step": step, "lr": lr, "images_per_s": rate, **means}
            extra = {"epoch": epoch + 1, "step": step, "phase": config.phase}
            _save_checkpoint(run_dir / CHECKPOINT_NAME, model, config, dataset, reader, extra)
            if options.select_on_val:
                score = _val_score(model, reader, config, dist.device, options.progress)
                record["val_mAP"] = score
                if score > best:
                    best = score
                    _save_checkpoint(run_dir / BEST_NAME, model, config, dataset, reader, extra)
            state = _train_state(epoch + 1, step, model, optimizer, scheduler, sampler, scaler, config)
            state["best"] = best
            _save_atomic(state, _state_path(run_dir))
            logger.write(record)
    finally:
        if logger is not None:
            logger.close()
        if dist.owns_group:
            from torch import distributed

            distributed.destroy_process_group()
    return final


def _wrap(model, config: TrainConfig, dist: _Dist):
    """The callable that runs the phase's forward: DDP-wrapped and/or compiled as configured."""
    module = _trained_module(model, config.phase)
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        # Batches without faces leave the student unused: DDP must tolerate unused parameters.
        module = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)
    if config.compile:
        module = torch.compile(module)
    return module


def _val_score(model, reader, config: TrainConfig, device, progress: bool) -> float:
    """Mean mAP over the dataset's protocols on the val split, with the phase's main stream."""
    from deskpro.train.evaluate import evaluate_model

    stream = {"teacher": "face", "deskpro": "both", "baseline": "body"}[config.phase]
    rows = evaluate_model(
        model,
        reader,
        preset(config.dataset).protocols,
        split="val",
        streams=(stream,),
        device=device,
        progress=progress,
        flip=config.test_flip,  # recipe hook: no flip under --recipe official
        trials=1,
    )
    scores = [r.mAP for r in rows if not r.protocol.endswith("-single")]
    if not scores:
        raise ValueError(f"{reader.shards_dir}: --select-on-val needs val rows (PRCC layout); found none")
    return float(np.mean(scores))


def run_training(
    shards_dir,
    run_dir,
    phase: str,
    overrides: dict | None = None,
    options: TrainRunOptions = TrainRunOptions(),
) -> Path:
    """Resolve the config for the shards (preset defaults, then overrides) and train; the final checkpoint."""
    config = resolve_config(shards_dir, phase, **(overrides or {}))
    amp_given = (overrides or {}).get("amp") is not None
    config = recipe.recipe_amp(config, resolve_device(options.device), amp_given)  # recipe hook: fp16
    return train(shards_dir, run_dir, config, options)
