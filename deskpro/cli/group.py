"""The `deskpro` click group and the option helpers every command module shares.

Library modules are imported inside each command so that `deskpro --help` stays instant (torch and
Ray take seconds to import); nothing else is imported lazily.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path

import click

from deskpro.common.stops import Interrupted, StopSignals
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


def remember_outputs(command: click.Command) -> None:
    """Keep each command's -o/--out value in ctx.meta (shared with the group), so that a system error
    without a file name (a full disk during a library's write) still names the output."""
    for param in getattr(command, "params", []):
        if isinstance(param, click.Option) and {"-o", "--out"} & set(param.opts):
            param.callback = _remembering(param.callback)
    for sub in getattr(command, "commands", {}).values():
        remember_outputs(sub)


def _remembering(callback):
    def remember(ctx: click.Context, param: click.Parameter, value):
        if callback is not None:
            value = callback(ctx, param, value)
        if value is not None:
            ctx.meta[OUTPUT_KEY] = str(value)
        return value

    return remember


def add_verbosity_options(command: click.Command) -> None:
    """Give `command` and every command below it -q/--quiet and -v/--verbose (once all are registered)."""
    names = {opt for param in command.params for opt in getattr(param, "opts", ())}
    if "--quiet" not in names:
        command.params.extend(VERBOSITY_OPTIONS)
    for sub in getattr(command, "commands", {}).values():
        add_verbosity_options(sub)


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some or choose another output folder",
    errno.EDQUOT: "disk quota exceeded; free some or choose another output folder",
    errno.EROFS: "read-only file system; choose a writable output folder",
    errno.EACCES: "permission denied; choose a folder you may write",
    errno.EPERM: "operation not permitted; choose a folder you may write",
}


OUTPUT_KEY = "deskpro.output"
_ATOMIC_TMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{32}\.tmp$")  # common.files.atomic_path's names


def os_error_line(exc: OSError, output: str | None = None) -> str:
    """One line for an operating-system error: the path first, then what is wrong and what to do.

    Library messages (FileNotFoundError("RUN/x: no training state ...")) are kept as they are; an
    error raised by the system itself ("[Errno 28] No space left on device: 'out/x.h5'") becomes
    "out/x.h5: no space left on the device; ...". HDF5 reports errno only inside its text.
    """
    code = exc.errno
    if code is None:  # h5py / HDF5: "... errno = 28, error message = 'No space left on device' ..."
        text = str(exc)
        for number in _OS_HINTS:
            if f"errno = {number}," in text or os.strerror(number) in text:
                code = number
                break
    if exc.filename is None and code not in _OS_HINTS:
        return str(exc) or repr(exc)
    where = exc.filename if exc.filename is not None else _filename_in(str(exc))
    if where is not None:  # a hidden temporary file of an atomic write: name the file it would become
        path = Path(str(where))
        match = _ATOMIC_TMP.match(path.name)
        where = str(path.with_name(match["name"])) if match else str(where)
    else:
        where = output  # the command's -o, when the system did not say which file
    what = _OS_HINTS.get(code) or (exc.strerror or str(exc)).rstrip(".").lower()
    return f"{where}: {what}" if where else what


_WRITE_FAILURES = ("iostream error", "PytorchStreamWriter failed", "unexpected pos")


def _is_write_failure(exc: RuntimeError) -> bool:
    return any(text in str(exc) for text in _WRITE_FAILURES)


def write_failure_line(exc: RuntimeError, output: str | None) -> str:
    """torch's writer says "basic_ios::clear: iostream error": name the output and, when its disk
    is full, say so."""
    where = Path(output) if output else None
    probe = where
    while probe is not None and not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe is not None and probe.exists() and shutil.disk_usage(probe).free < (1 << 20):
        return f"{where}: no space left on the device; free some or choose another output folder"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{where or 'output'}: could not be written ({first})"


def _filename_in(text: str) -> str | None:
    """The file an HDF5 message names (filename = '...'), if any."""
    marker = "filename = '"
    start = text.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = text.find("'", start)
    return text[start:end] if end > start else None


class _Group(click.Group):
    """A group whose commands report what a user or an operator can cause as one line, not a traceback.

    The library raises ValueError (and its subclasses: ManifestError, ShardError, CheckpointError,
    ...), FileNotFoundError and FileExistsError with messages that name the file and what is
    wrong: the whole message a user needs. Errors of the system (a read-only folder, a full disk,
    a permission) are one line naming the path (`os_error_line`); Ctrl-C (or SIGTERM turned into
    KeyboardInterrupt) is one line and exit status 130. DESKPRO_TRACEBACK=1 shows the traceback.
    """

    def invoke(self, ctx: click.Context):
        try:
            with StopSignals():  # SIGTERM unwinds every command as Ctrl-C does (finally blocks, locks)
                return super().invoke(ctx)
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            if os.environ.get("DESKPRO_TRACEBACK"):
                raise
            raise click.ClickException(str(exc) or repr(exc)) from None
        except OSError as exc:
            if os.environ.get("DESKPRO_TRACEBACK"):
                raise
            raise click.ClickException(os_error_line(exc, ctx.meta.get(OUTPUT_KEY))) from None
        except RuntimeError as exc:  # torch.save's C++ writer on a full or vanished disk
            if os.environ.get("DESKPRO_TRACEBACK") or not _is_write_failure(exc):
                raise
            raise click.ClickException(write_failure_line(exc, ctx.meta.get(OUTPUT_KEY))) from None
        except KeyboardInterrupt as exc:
            if os.environ.get("DESKPRO_TRACEBACK"):
                raise
            # an Interrupted says which signal and what the command kept
            said = str(exc) if isinstance(exc, Interrupted) else "interrupted (Ctrl-C or SIGTERM)"
            click.echo(f"Error: {said}", err=True)
            ctx.exit(130)


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


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A device torch does not know, or one this process cannot use, is refused before any work."""
    if value is None or value == "auto":
        return value
    from deskpro.common.torch_utils import resolve_device

    try:
        resolve_device(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"--device {value}: ")) from None
    return value


def device_option(help: str = "Torch device: auto (cuda when available), cpu, cuda, cuda:N."):
    """--device, the one spelling and default (auto) of every command that runs a network."""
    return click.option("--device", default="auto", show_default=True, callback=_check_device, help=help)
