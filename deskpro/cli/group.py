"""The `deskpro` click group and the option helpers every command module shares.

Library modules are imported inside each command so that `deskpro --help` stays instant (torch and
Ray take seconds to import); nothing else is imported lazily.
"""

from __future__ import annotations

import logging
import os

import click

from deskpro.common.threads import ENV_OVERRIDE, set_thread_env

VERBOSITY_KEY = "deskpro.verbosity"


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """-q lowers and -v raises the verbosity kept in ctx.meta (shared by the group and its commands)."""
    if value:
        level = -1 if param.name == "quiet" else 1
        ctx.meta[VERBOSITY_KEY] = level
        logging.getLogger("deskpro").setLevel(logging.WARNING if level < 0 else logging.DEBUG)


VERBOSITY_OPTIONS = (
    click.Option(
        ["-q", "--quiet"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbosity,
        help="Only errors and the final result: no progress bars, no step lines.",
    ),
    click.Option(
        ["-v", "--verbose"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbosity,
        help="More detail: Ray's own logs, debug lines.",
    ),
)


def verbosity() -> int:
    """-1 with -q, 1 with -v, else 0: what the running command was asked for."""
    ctx = click.get_current_context(silent=True)
    return 0 if ctx is None else int(ctx.meta.get(VERBOSITY_KEY, 0))


def progress_option():
    """--progress/--no-progress, the one spelling every command uses (unset: on, off under -q)."""
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bars [default: on; off with -q].",
    )


def show_progress(progress: bool | None = None) -> bool:
    """Whether to draw progress bars: --progress/--no-progress when given, else not under -q."""
    return verbosity() >= 0 if progress is None else progress


def add_verbosity_options(command: click.Command) -> None:
    """Give `command` and every command below it -q/--quiet and -v/--verbose (once all are registered)."""
    names = {opt for param in command.params for opt in getattr(param, "opts", ())}
    if "--quiet" not in names:
        command.params.extend(VERBOSITY_OPTIONS)
    for sub in getattr(command, "commands", {}).values():
        add_verbosity_options(sub)


class _Group(click.Group):
    """A group whose commands report bad input as one line, not a traceback.

    The library raises ValueError (and its subclasses: ManifestError, ShardError, CheckpointError,
    ...), FileNotFoundError and FileExistsError with messages that name the file and what is
    wrong: the whole message a user needs. DESKPRO_TRACEBACK=1 shows the traceback instead.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            if os.environ.get("DESKPRO_TRACEBACK"):
                raise
            raise click.ClickException(str(exc) or repr(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="deskpro")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    envvar="DESKPRO_THREADS",
    help="Compute threads per process (default: the CPUs this process may use, less the cores other "
    "processes keep busy and its workers).",
)
def main(threads: int | None) -> None:
    """deskpro: reproducible DeSKPro for cloth-changing person re-identification."""
    # Before torch loads (commands import it lazily): the override reaches this process's thread
    # choice and its children. Thread counts are applied where the workers are known (evaluate, the
    # training loader, the stages).
    if threads is not None:
        os.environ[ENV_OVERRIDE] = str(threads)
        set_thread_env(threads)


def _parse_hw(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """'384x128' -> (384, 128); None stays None."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW: expected HEIGHTxWIDTH such as 384x128") from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"sizes must be positive, got {value!r}")
    return h, w


def _with(options):
    """Apply a list of click decorators in order (the first one is the first in --help)."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
