"""What `--resume RUN` reads back from the run directory, so that nothing needs repeating: the
phase, the shards and the teacher it trained with, and whether it already finished."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deskpro.train.rundir import RunDir


@dataclass(frozen=True)
class SavedRun:
    """A run directory's saved state, as a resume sees it."""

    path: Path
    phase: str
    shards: str | None  # None: a run written before deskpro recorded its inputs
    teacher: str | None
    epoch: int  # epochs done
    batch: int  # batches done in the next epoch (a run stopped by --max-iters)
    epochs: int

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs and self.batch == 0

    @property
    def checkpoint(self) -> Path:
        return RunDir(self.path).checkpoint


def saved_run(run_dir) -> SavedRun:
    """RUN/train_state.pt's phase, inputs and progress; FileNotFoundError naming the file if absent."""
    state = RunDir(run_dir).load_state()
    inputs = state.get("inputs") or {}
    return SavedRun(
        path=Path(run_dir),
        phase=state["config"]["phase"],
        shards=inputs.get("shards"),
        teacher=inputs.get("teacher"),
        epoch=int(state["epoch"]),
        batch=int(state.get("batch", 0)),
        epochs=int(state["config"]["epochs"]),
    )


def resume_inputs(saved: SavedRun, phase: str | None, shards, teacher):
    """(phase, shards, teacher) of a resume: what was given, else what the run recorded.

    A phase that differs from the run's is refused (ValueError, one line). Shards or a teacher
    given anyway are used (a moved folder); what they hold is checked where the run is resumed.
    """
    if phase is not None and phase != saved.phase:
        raise ValueError(f"--resume: {saved.path} is a {saved.phase} run, not {phase}; drop the phase flag")
    if shards is None:
        if saved.shards is None:
            raise ValueError(f"--resume: {saved.path} does not record its shards; give SHARDS")
        shards = Path(saved.shards)
        if not shards.is_dir():
            raise FileNotFoundError(f"--resume: {shards}: the run's shards are gone; give SHARDS")
    if saved.phase == "deskpro" and teacher is None:
        teacher = saved.teacher
        if teacher is None:
            raise ValueError(f"--resume: {saved.path} does not record its teacher; give --teacher")
    return saved.phase, Path(shards), teacher
