"""The training loop: face teacher, DeSKPro, or the global-stream baseline, from training shards.

`train` reads top to bottom: checks, setup, then per epoch a pass over the P x K batches followed
by the bookkeeping (checkpoint, val score, train state, log line). What each phase builds and
optimises is in `deskpro.train.phases`, the run directory's files in `deskpro.train.rundir`, and
how the settings are resolved (preset, saved run, overrides) in `deskpro.train.settings`.
Under DDP only rank 0 writes. No model selection on the test split: the last epoch is the result,
or the best epoch on the val split with `select_on_val`.

Resume is exact, also after `max_iters`: a run stopped mid-epoch saves its place in the epoch (the
batches done, the epoch's augmentation generator and loss sums) without stepping the lr scheduler,
and a resume trains the rest of that epoch, so `max_iters=n` then `resume=True` gives the same
weights and log as one uninterrupted run.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deskpro.common.locks import output_lock
from deskpro.common.stops import Interrupted, StopSignals
from deskpro.common.threads import choose_threads, requested_threads
from deskpro.common.torch_utils import autocast_context
from deskpro.config import TrainConfig
from deskpro.train import recipe
from deskpro.train.data import PKBatchSampler, decoded, make_loader, open_reader, resolve_decode_on
from deskpro.train.halts import interrupted_message, nonfinite_loss_error
from deskpro.train.parallel import setup_dist, torch_device, wrap_module
from deskpro.train.phases import (
    PHASES,
    build_model,
    loss_terms,
    trainable_parameters,
    trained_module,
    val_score,
)
from deskpro.train.rundir import (
    RunDir,
    ScalarLogger,
    check_same_data,
    check_tensorboard,
    data_record,
    restore_training_state,
    resume_config,
    save_checkpoint,
    training_state,
)
from deskpro.train.schedule import warmup_cosine
from deskpro.train.settings import planned_config
from deskpro.train.transforms import augment_batch

SHOWN_TERMS = ("total", "ce", "triplet", "att", "fkp", "ce_body", "ce_face")


@dataclass(frozen=True)
class TrainRunOptions:
    """How to run (not what to learn): device, limits, resume, logging, DDP."""

    device: str = "cpu"
    teacher: str | None = None  # teacher checkpoint for phase "deskpro" (ours or the official file)
    imagenet: str | None = None  # OSNet x1.0 ImageNet weights to initialise the trained streams
    max_iters: int | None = None  # stop after this many iterations in all (tests, demo); resumable
    resume: bool = False
    select_on_val: bool = False
    progress: bool = True
    epoch_lines: bool = False  # one printed line per epoch (where bars would interleave)
    tensorboard: bool = False
    distributed: bool = False  # init torch.distributed from torchrun's environment (env://)
    local_rank: int = 0
    trust_checkpoint: bool = False
    from_scratch: bool = False  # a real-dataset run without --imagenet (recipe.check_init)


def run_threads(config: TrainConfig, device: torch.device, saved: dict | None) -> int | None:
    """The run's thread count on a CPU: `--threads`, else a resumed run's own, else chosen now.

    On a CPU the count is part of what the run computes (it orders the float sums), so it is chosen
    once and a resume keeps it: the resumed run equals the uninterrupted one whatever the load. On a
    GPU it only paces the host's side: None, and each epoch's loader follows the load.
    """
    if device.type != "cpu":
        return None
    return requested_threads() or (saved or {}).get("threads") or choose_threads(config.num_workers)


def run_inputs(shards_dir, teacher) -> dict:
    """What a resume reads back instead of asking again: absolute paths of the shards and teacher."""
    return {
        "shards": str(Path(shards_dir).resolve()),
        "teacher": None if teacher is None else str(Path(teacher).resolve()),
    }


def run_training(
    shards_dir,
    run_dir,
    phase: str,
    overrides: dict | None = None,
    options: TrainRunOptions = TrainRunOptions(),
) -> Path:
    """Resolve the config (`planned_config`) and train; returns the final checkpoint."""
    config = planned_config(shards_dir, run_dir if options.resume else None, phase, overrides)
    amp_given = (overrides or {}).get("amp") is not None
    config = recipe.recipe_amp(config, torch_device(options.device), amp_given)  # official: fp16 on GPU
    return train(shards_dir, run_dir, config, options)


def train(shards_dir, run_dir, config: TrainConfig, options: TrainRunOptions = TrainRunOptions()) -> Path:
    """Train one phase from the shards into run_dir; returns the path of the final checkpoint.

    The final checkpoint is RUN/checkpoint.pt (the latest model), or RUN/best.pt with select_on_val.
    The run directory is locked while training (a second run into it is refused, naming this one).
    SIGINT / SIGTERM stop the run within a batch: the place is saved (train_state.pt) and
    `Interrupted` raised; resume continues exactly there.
    """
    writes = not options.distributed or int(os.environ.get("RANK", "0")) == 0  # rank 0 writes
    lock = output_lock(run_dir, what="training run", flag="-o") if writes else contextlib.nullcontext()
    with lock, StopSignals() as stops:
        return _train(shards_dir, run_dir, config, options, stops)


def _train(shards_dir, run_dir, config: TrainConfig, options: TrainRunOptions, stops: StopSignals) -> Path:
    # -- checks: everything that can be refused is refused before anything is written
    check_settings(config, options)
    recipe.check_init(config, options.imagenet, options.from_scratch)
    _amp_context(config.amp, torch_device(options.device))  # an amp the device cannot run
    if options.tensorboard:
        check_tensorboard()
    run = RunDir(run_dir)
    run.check(options.resume)
    saved = run.load_state() if options.resume else None
    if saved is not None:
        config = resume_config(saved["config"], config, run.state)
        run.check_finished(saved, config.epochs, options.select_on_val)

    # -- setup: data, model, optimiser, schedule, sampler; then the saved state over them
    reader = open_reader(shards_dir)
    if reader.options.get("parse_maps", True) is False:
        raise ValueError(
            f"{shards_dir}: packed without parse maps; training needs them: run `deskpro parse`, then pack"
        )
    decode_on = resolve_decode_on(config.decode_on, torch_device(options.device), reader)  # worker / device
    dist = setup_dist(options.distributed, options.device, options.local_rank)
    teacher = recipe.teacher_file(config, options.teacher, options.trust_checkpoint)  # read once
    dataset = recipe.train_dataset(reader, config, teacher)  # faceless rows and the class table
    data = data_record(reader, dataset.classes)
    check_same_data((saved or {}).get("data"), data, run.state, shards_dir)  # before the model
    model = build_model(config, dataset.num_classes, imagenet=options.imagenet, teacher=teacher).to(
        dist.device
    )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(  # foreach: one fused update per step on the CPU too (as on CUDA)
        trainable_parameters(model, config.phase),
        lr=config.lr,
        weight_decay=config.weight_decay,
        foreach=True,
    )
    scheduler = warmup_cosine(
        optimizer, epochs=config.epochs, warmup_epochs=config.warmup_epochs, min_factor=config.min_lr_factor
    )
    sampler = recipe.make_sampler(config, dataset.labels, dist.rank, dist.world_size)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=config.amp == "fp16")
    epoch, batch, step, best, partial = 0, 0, 0, -1.0, {}  # batch: batches done in `epoch`
    if saved is not None:
        restore_training_state(
            saved, model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler, scaler=scaler
        )
        epoch, batch, step = int(saved["epoch"]), int(saved.get("batch", 0)), int(saved["step"])
        best, partial = float(saved.get("best", -1.0)), saved.get("partial") or {}
    threads = run_threads(config, dist.device, saved)
    if dist.main:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(config)
        run.trim_log(step, (saved or {}).get("log_record"))
    module = trained_module(model, config.phase)  # what the checkpoints hold
    forward_model = wrap_module(module, config.compile, dist)
    augment = recipe.augment_settings(config)
    logger = ScalarLogger(run, options.tensorboard) if dist.main else None

    def reached() -> bool:
        return options.max_iters is not None and step >= options.max_iters

    saved_step, stepped = step, False  # the step train_state.pt is at; the scheduler moved past it

    def save(complete: bool, with_val: bool = True) -> None:
        """Bookkeeping (rank 0): checkpoint, val score, train state, then the log line."""
        nonlocal best, saved_step
        record = {"epoch": epoch + 1, "step": step, "lr": lr, "images_per_s": rate}
        record |= {k: v / max(batch, 1) for k, v in sums.items()}
        if not complete:
            record |= {"partial": True, "batches": batch}
        extra = {"epoch": epoch + 1, "step": step, "phase": config.phase, "complete": complete}
        save_checkpoint(run.checkpoint, module, config, dataset, reader, extra)
        if options.select_on_val and with_val:
            score = val_score(model, reader, config, dist.device, options.progress)
            record["val_mAP"] = score
            if score > best:
                best = score
                save_checkpoint(run.best, module, config, dataset, reader, extra)
        in_epoch = {} if complete else {"generator": generator.get_state(), "sums": sums, "images": images}
        state = training_state(
            epoch=epoch + int(complete),
            batch=0 if complete else batch,
            step=step,
            config=config,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            sampler=sampler,
            scaler=scaler,
            best=best,
            partial=in_epoch,
            threads=threads,
            data=data,
            log_record=record,
            inputs=run_inputs(shards_dir, options.teacher),
        )
        run.save_state(state)
        saved_step = step
        run.append_log(record)
        logger.write(record)
        if options.epoch_lines:  # instead of bars, e.g. several runs in parallel processes
            print(
                f"  {run.path.name}: epoch {epoch + 1}/{config.epochs}, loss "
                f"{record.get('total', float('nan')):.3f}, {rate:.0f} img/s",
                flush=True,
            )

    try:
        while epoch < config.epochs and not reached():
            # -- one epoch (or the rest of one): P x K batches, (decoded and) augmented on the device
            model.train()
            sampler.set_epoch(epoch)
            epoch_length = len(sampler)
            generator = _epoch_generator(config, epoch, dist.rank, dist.device)
            draws = recipe.draws_of_epoch(config, generator, dist.device)  # per sample / per worker
            if partial:
                generator.set_state(partial["generator"])
            sums, images = dict(partial.get("sums", {})), int(partial.get("images", 0))
            loader = make_loader(
                dataset,
                _SkipBatches(sampler, batch),
                workers=config.num_workers,
                pin_memory=dist.device.type == "cuda",
                decode_on=decode_on,
                threads=threads,
            )
            # Starting a loader draws its workers' seed from the global RNG; keeping that draw
            # off the global stream gives dropout the same draws on a fresh and a resumed epoch.
            with torch.random.fork_rng(devices=[]):
                batches = iter(loader)
            stops.check()  # a signal whose exception a fork callback swallowed (common/stops.py)
            lr = optimizer.param_groups[0]["lr"]
            bar = tqdm(
                total=epoch_length,
                initial=batch,
                desc=f"{config.phase} {epoch + 1}/{config.epochs}",
                disable=not (options.progress and dist.main),
                leave=False,
            )
            start, timed_images, rate = time.perf_counter(), 0, 0.0
            for raw in batches:
                stops.hold()  # a first signal waits for the end of the step
                raw = decoded(raw, reader.options, dist.device)  # decode_on=device: JPEG bytes decoded here
                inputs = augment_batch(
                    raw,
                    settings=augment,
                    device=dist.device,
                    channels_last=config.channels_last,
                    draws=draws.for_batch(batch, len(raw["label"])),
                )
                with _amp_context(config.amp, dist.device):
                    terms = loss_terms(forward_model, inputs, config)
                values = {k: float(v.detach()) for k, v in terms.items()}
                if not math.isfinite(values["total"]):
                    raise nonfinite_loss_error(values["total"], config, run, epoch, step + 1, saved_step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(optimizer)
                scaler.update()
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                batch, step = batch + 1, step + 1
                images, timed_images = images + len(raw["label"]), timed_images + len(raw["label"])
                rate = timed_images / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in values.items() if k in SHOWN_TERMS} | {"img/s": f"{rate:.1f}"}
                )
                bar.update()
                stops.release()
                if reached():
                    break
            stops.hold()  # the epoch's end, scheduler step and bookkeeping are not cut short
            bar.close()
            complete = batch == epoch_length
            if complete:
                scheduler.step()  # the schedule is per epoch: only a whole epoch moves it
                stepped = True  # until the epoch's state is saved: no partial save in between

            # -- bookkeeping (rank 0): checkpoint, val score, train state, then the log line
            if dist.main:
                save(complete)
            if complete:
                epoch, batch, partial, stepped = epoch + 1, 0, {}, False
            stops.release()
    except Interrupted as stop:
        if dist.main and step > saved_step and not stepped:  # keep the steps since the last save
            save(False, with_val=False)
        raise Interrupted(interrupted_message(stop, config, run, epoch, step), stop.signum) from None
    finally:
        if logger is not None:
            logger.close()
        if dist.owns_group:
            from torch import distributed

            distributed.destroy_process_group()
    final = run.best if options.select_on_val else run.checkpoint
    if dist.main and not final.is_file():
        raise FileNotFoundError(f"{final}: missing after training; the run directory was changed meanwhile")
    return final


def check_settings(config: TrainConfig, options: TrainRunOptions) -> None:
    """Refuse settings the loop cannot run, in one line each (the CLI checks every range first)."""
    if config.phase not in PHASES:
        raise ValueError(f"unknown phase {config.phase!r}; expected one of {', '.join(PHASES)}")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if options.max_iters is not None and options.max_iters < 1:
        raise ValueError(f"max_iters must be >= 1 (or None: no limit), got {options.max_iters}")
    if options.select_on_val and config.phase == "teacher":
        raise ValueError("--select-on-val is for the body / DeSKPro phases (evaluation uses the student)")


class _SkipBatches(torch.utils.data.Sampler):
    """The batches of `sampler`'s current epoch after the first `skip` (where a resume continues)."""

    def __init__(self, sampler: PKBatchSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)


# ---------------------------------------------------------------- setup helpers


def _amp_context(amp: str | None, device: torch.device):
    """`autocast_context` for the config's amp ("none" or None: full precision)."""
    return autocast_context(device, None if amp in ("none", None) else amp)


def _epoch_generator(config: TrainConfig, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The augmentation generator of one epoch: seeded from (seed, epoch, rank), so resume is exact."""
    seed = int(np.random.default_rng([config.seed, epoch, rank, 17]).integers(0, 2**62))
    return torch.Generator(device=device).manual_seed(seed)
