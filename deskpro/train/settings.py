"""The settings a training run uses: the dataset preset for the shards, or a resumed run's saved
config, with the caller's overrides on top (TrainConfig fields; `method` may be a partial dict)."""

from __future__ import annotations

import dataclasses

from deskpro.config import TrainConfig, preset
from deskpro.train.data import open_reader
from deskpro.train.phases import PHASES
from deskpro.train.rundir import RunDir


def planned_config(shards_dir, resume_dir, phase: str, overrides: dict | None = None) -> TrainConfig:
    """The config a run trains with: the preset defaults for the shards (the TrainConfig defaults
    without shards), or with `resume_dir` that run's saved config; then the overrides on top.

    Overrides are TrainConfig fields; None values are ignored and `method` may be a partial dict
    ({"lam": 0.0}). A resume later refuses overrides that change the run (`resume_config`).
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    if resume_dir is not None:
        base = dataclasses.replace(
            TrainConfig.from_dict(RunDir(resume_dir).load_state()["config"]), phase=phase
        )
    elif shards_dir is not None:
        base = resolve_config(shards_dir, phase)
    else:
        base = TrainConfig(phase=phase)
    return apply_overrides(base, overrides or {})


def apply_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """`config` with the overrides' non-None values; `method` as MethodSettings or a partial dict."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(unknown)}")
    method = overrides.get("method")
    if isinstance(method, dict):
        overrides["method"] = dataclasses.replace(
            config.method, **{k: v for k, v in method.items() if v is not None}
        )
    return dataclasses.replace(config, **overrides)


def resolve_config(shards_dir, phase: str, **overrides) -> TrainConfig:
    """`TrainConfig.for_dataset` for the shards' dataset, sizes and label set, then the overrides."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    reader = open_reader(shards_dir)
    dataset = reader.meta.get("dataset")
    if not dataset:
        raise ValueError(f"{shards_dir}: manifest.json meta has no 'dataset'; cannot choose the settings")
    config = TrainConfig.for_dataset(
        dataset,
        phase=phase,
        body_size=tuple(int(v) for v in reader.options["body_size"]),
        face_size=int(reader.options["face_size"]),
        label_set=reader.meta.get("label_set") or preset(dataset).label_set,
    )
    return apply_overrides(config, overrides)


def fit_warmup(config: TrainConfig, warmup_given: bool) -> tuple[TrainConfig, str | None]:
    """A warm-up the run can have: (config, a note saying what changed, or None).

    A preset warm-up that is not below the epochs (10 against `--epochs 2`) becomes epochs - 1,
    the most the schedule can run, and is written into the config (so its config.json is one
    `--config` accepts); a warm-up the user gave is refused instead (ValueError naming both flags).
    """
    if config.warmup_epochs < config.epochs:
        return config, None
    if warmup_given:
        raise ValueError(
            f"--warmup-epochs {config.warmup_epochs} must be below --epochs {config.epochs}; "
            "give a smaller --warmup-epochs"
        )
    fitted = dataclasses.replace(config, warmup_epochs=config.epochs - 1)
    note = (
        f"warm-up: {fitted.warmup_epochs} epoch(s), the preset's {config.warmup_epochs} "
        f"not being below --epochs {config.epochs} (--warmup-epochs sets it)"
    )
    return fitted, note


def check_val_split(shards_dir) -> None:
    """--select-on-val needs val rows: refused before training when the shards have none."""
    splits = set(open_reader(shards_dir).index.column("split").to_pylist())
    if "val" not in splits:
        raise ValueError(
            f"--select-on-val: {shards_dir} has no val split (splits: {', '.join(sorted(splits))}); "
            "drop --select-on-val (the last epoch is the result)"
        )
