"""Why a training run stopped early, in one line: a loss that is not finite, or a stop signal.

Both lines say what the run directory keeps and what to do next, for the CLI to print as they are.
"""

from __future__ import annotations

from deskpro.common.stops import Interrupted


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; nothing of the bad step was saved (one line)."""


def nonfinite_loss_error(
    value: float, config, run, epoch: int, step: int, saved_step: int
) -> NonFiniteLossError:
    """The one-line error for a loss of `value` at `epoch` (0-based) and global `step`: the bad step
    is not taken, and the run directory keeps the state of `saved_step`."""
    if run.state.is_file():
        files = f"{run.checkpoint.name}, {run.state.name}"
        kept = f"{run.path} keeps the last good state (step {saved_step}: {files})"
    else:
        kept = "nothing was saved (no epoch had finished)"
    advice = "a lower --lr in a new run (another -o)"
    if config.amp not in (None, "none"):
        advice += ", or --resume --amp none (full precision)"
    return NonFiniteLossError(
        f"{config.phase}: the loss is {value} at epoch {epoch + 1}, step {step}; stopped, {kept}. "
        f"Try {advice}, and `deskpro verify` on the shards"
    )


def interrupted_message(stop: Interrupted, config, run, epoch: int, step: int) -> str:
    """What a stopped run says (the command prints it as its one error line)."""
    if run.state.is_file():
        kept = f"{run.state} keeps step {step}: continue with --resume"
    else:
        kept = "nothing was saved yet (no step finished): start it again"
    return f"{config.phase}: stopped by {stop.signal_name} at epoch {epoch + 1}, step {step}; {kept}"
