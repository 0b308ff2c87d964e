"""The Ray executor of a stage run: Ray Data feeds manifest rows to the stage, the driver writes parts.

How a stage is laid out on the cluster (`layout`):
- light stages (the `oracle`/`none` backends, no network): plain Ray tasks that decode and run the
  stage in one step, as many at once as there are CPUs;
- a network on CPUs: an actor pool whose actors decode their own batches, so that N actors use N
  CPUs (separate decoding tasks would compete with them for the same CPUs);
- a network on GPUs: decoding tasks on the CPUs feed an autoscaling pool of GPU actors.

A stage that reads an upstream stage's parts (restore) gets slices of them and its workers read the
rows (deskpro.pipeline.part_slices): then no operator but the stage's own asks for a CPU, and a pool
may start every actor that fits at once without starving anything it needs.

Ray is imported only inside these functions: the in-process executor (deskpro.pipeline.plan) needs none.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from deskpro.common import images
from deskpro.pipeline.part_slices import read_slices, slice_tables
from deskpro.pipeline.plan import (
    ArrowStage,
    PartCollector,
    StageError,
    StagePlan,
    StageRunOptions,
    source_tables,
)
from deskpro.pipeline.stages import NO_NET_BACKENDS

PROBE_TIMEOUT_S = 10.0  # TCP connect to a cluster's GCS port

# CPUs per image-decoding task feeding GPU actors: decoding is light next to a network on a GPU.
DECODE_CPUS = 0.5

RAY_WRAPPERS = frozenset(
    {"RayTaskError", "UserCodeException", "RayError", "RaySystemError", "SystemException", "ActorDiedError"}
)

# Loggers that speak on every successful run (token-auth notice, Ray Data's progress-bar notice and
# per-dataset lines): silenced unless verbose; Ray's own errors become deskpro's one-line errors.
QUIET_LOGGERS = ("ray", "ray.data", "ray._private.authentication.authentication_token_setup")

CLIENT_REFUSED = (
    "--ray-address {address}: Ray Client (ray://) cannot run Ray Data pipelines; run deskpro on a "
    "cluster node with --ray-address auto (or HEAD:6379), or submit it as a job: "
    "ray job submit --address http://HEAD:8265 -- deskpro ..."
)


class RayConnectError(StageError):
    """No cluster at the address, or one that refused us: the message says what to do."""


def wants_gpu(kwargs: dict) -> bool:
    return not is_light(kwargs) and str(kwargs.get("device", "auto")) != "cpu"


def is_light(kwargs: dict) -> bool:
    """No network to build (oracle / none backends): the stage is cheap to construct per batch."""
    return str(kwargs.get("backend", "")) in NO_NET_BACKENDS


def check_address(address: str | None) -> None:
    if address and address.strip().lower().startswith("ray://"):
        raise RayConnectError(CLIENT_REFUSED.format(address=address))


def _quiet(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.CRITICAL
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _connect_error(address: str, exc: BaseException) -> RayConnectError:
    import ray.exceptions

    if isinstance(exc, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(exc):
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        return RayConnectError(
            f"--ray-address {address}: the cluster refused the connection (token authentication; "
            f"RAY_AUTH_MODE is {mode}); set RAY_AUTH_MODE=token and the cluster's token in "
            "RAY_AUTH_TOKEN (or a file at RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        )
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200].rstrip(".")
    return RayConnectError(
        f"--ray-address {address}: cannot join a Ray cluster there ({first}); start one with "
        "`ray start --head` or give the head's HOST:PORT (GCS port, 6379 by default)"
    )


def probe_cluster(address: str, verbose: bool = False) -> None:
    """Fail fast, in one line, where ray.init would retry for minutes: nothing at the address (it
    waits about ten minutes), or a cluster that rejects our token (a minute of warnings)."""
    import socket

    import ray._private.services as services
    import ray._raylet

    try:
        resolved = services.canonicalize_bootstrap_address_or_die(address)
    except (ConnectionError, ValueError) as exc:
        raise _connect_error(address, exc) from None
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise _connect_error(address, ConnectionError(f"nothing listens at {resolved}: {exc}")) from None
    try:
        with contextlib.nullcontext() if verbose else _stderr_silenced():
            ray._raylet.GcsClient(address=resolved)
    except Exception as exc:  # AuthenticationError, or a GCS that does not answer
        raise _connect_error(address, exc) from None


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null: Ray's C++ client prints a warning per retry there."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, verbose: bool = False
) -> Iterator[None]:
    """Ray for one command: reuse a running one, join `address` (or RAY_ADDRESS), or start a private one.

    A private local Ray is started with address="local": plain ray.init() would join whatever cluster
    was last started on the machine (someone else's `ray start`).
    """
    import ray

    _quiet(verbose)
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_address(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting from a local start
    common = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}
    if address:
        probe_cluster(address, verbose)
    try:
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **common)
    except (ConnectionError, ray.exceptions.RayError, RuntimeError, ValueError) as exc:
        if not address:
            raise StageError(f"cannot start a local Ray: {describe_error(exc)}") from None
        raise _connect_error(address, exc) from None
    _quiet(verbose)  # ray.init configures Ray's loggers again
    try:
        yield
    finally:
        ray.shutdown()


def ray_source(plan: StagePlan, batch_size: int):
    """The input dataset, from the driver: manifest rows (ids and paths, small), or for restore, slices
    of detect's part files (file, first row, rows) whose rows, the face crops, the workers read.

    Not ray.data.read_parquet: its listing task and footer-reading actors each need a free CPU, which
    an actor pool holding every CPU never leaves (issue 25: restore hung).
    """
    import ray.data

    if plan.upstream_dir is None:
        return ray.data.from_arrow(list(source_tables(plan, batch_size)))
    return ray.data.from_arrow(slice_tables(plan, batch_size))


class DecodingStage(ArrowStage):
    """An actor that decodes its own batches before the stage: one CPU does both, none is left idle."""

    def __init__(self, stage_class: type, kwargs: dict, decode: dict, threads: int | None = None) -> None:
        super().__init__(stage_class, kwargs, threads)
        self.decode = decode  # images.decode_batch's keywords (root, max_pixels)

    def __call__(self, batch):
        return super().__call__(images.decode_batch(batch, **self.decode))


class SliceReadingStage(ArrowStage):
    """An actor that reads its batch's rows from an upstream part file (a slice) before the stage."""

    def __init__(self, stage_class: type, kwargs: dict, threads: int | None = None) -> None:
        super().__init__(stage_class, kwargs, threads)
        self.columns = tuple(stage_class.input_columns)

    def __call__(self, batch):
        return super().__call__(read_slices(batch, self.columns))


def light_batch(
    batch, *, stage_class: type, kwargs: dict, decode: dict, slices: bool = False, threads: int | None = None
):
    """A light stage as a plain task: read its rows (`slices` of an upstream part) or decode its
    images, when it needs either, and run, built per batch."""
    if slices:
        batch = read_slices(batch, tuple(stage_class.input_columns))
    elif stage_class.needs_images:
        batch = images.decode_batch(batch, **decode)
    return ArrowStage(stage_class, kwargs, threads)(batch)


@dataclass(frozen=True)
class Layout:
    """How a stage runs on the cluster: tasks or actors, how many, and what each asks for."""

    kind: str  # "tasks" | "cpu-actors" (decode inside) | "gpu-actors" (decode tasks in front)
    actors: int  # the pool's largest size (tasks: 0)
    gpus: float  # per actor
    cpus: float  # per actor or task
    initial: int = 1  # actors started at once: as many as fit in the free resources now

    def describe(self) -> str:
        if self.kind == "tasks":
            return f"tasks of {self.cpus:g} CPU"
        return f"{self.actors} actor(s) of {self.cpus:g} CPU, {self.gpus:g} GPU"


def layout(plan: StagePlan, opts: StageRunOptions, resources: dict) -> Layout:
    """The layout for this stage on a cluster with `resources` (ray.available_resources())."""
    if is_light(plan.kwargs) and opts.num_actors is None and not opts.num_gpus:
        return Layout("tasks", 0, 0.0, opts.num_cpus)
    gpus = opts.num_gpus
    if gpus is None:
        gpus = 1.0 if wants_gpu(plan.kwargs) and resources.get("GPU", 0) > 0 else 0.0
    cpus = resources.get("CPU", 0)
    if gpus > 0 and plan.stage_class.needs_images:
        cpus -= DECODE_CPUS  # one decoding task in front of the GPU actors must find a CPU
    fit = math.floor(cpus / opts.num_cpus + 1e-9)
    if gpus > 0:
        fit = min(fit, math.floor(resources.get("GPU", 0) / gpus + 1e-9))
    if opts.num_actors is not None:
        actors = opts.num_actors
    elif gpus > 0:
        actors = max(1, math.floor(resources.get("GPU", 0) / gpus + 1e-9))
    else:
        actors = max(1, fit)
    kind = "gpu-actors" if gpus > 0 else "cpu-actors"
    return Layout(kind, actors, gpus, opts.num_cpus, initial=max(1, min(actors, fit)))


def actor_pool(lay: Layout):
    """Ray Data's pool for `lay`: every actor that fits in the free resources starts at once (their
    start-up, seconds each, overlaps), one is enough to run, and it grows to `lay.actors` as work
    queues and resources free up (a reused Ray whose previous stage still holds CPUs).

    Safe because no other operator of the dataset needs a CPU (ray_source; GPU actors' decoding tasks
    are left DECODE_CPUS by `layout`). With restore's input read by Ray Data's Parquet reader, whose
    listing task needs a CPU, this start hung restore (issue 25; benchmarks/ray_pool_stress.py).
    """
    import ray.data

    try:
        return ray.data.ActorPoolStrategy(min_size=1, max_size=lay.actors, initial_size=lay.initial)
    except TypeError:  # Ray before 2.50 has no initial size: one actor at the start
        return ray.data.ActorPoolStrategy(min_size=1, max_size=lay.actors)


def build_dataset(plan: StagePlan, opts: StageRunOptions, lay: Layout):
    ds = ray_source(plan, opts.batch_size)
    slices = plan.upstream_dir is not None  # one input row per batch: a slice of an upstream part
    batch_size = 1 if slices else opts.batch_size
    # Each actor or task computes on the CPUs Ray gave it, not on every core of its node.
    stage_args = {"stage_class": plan.stage_class, "kwargs": plan.kwargs, "threads": max(1, int(lay.cpus))}
    if lay.kind == "tasks":
        return ds.map_batches(
            light_batch,
            fn_kwargs={**stage_args, "decode": plan.decode_kwargs, "slices": slices},
            batch_size=batch_size,
            num_cpus=lay.cpus,
        )
    if lay.kind == "gpu-actors" and plan.stage_class.needs_images:
        decode = {"fn_kwargs": plan.decode_kwargs, "num_cpus": DECODE_CPUS}
        ds = ds.map_batches(images.decode_batch, batch_size=opts.batch_size, **decode)
    fused = lay.kind == "cpu-actors" and plan.stage_class.needs_images
    actor_class = DecodingStage if fused else SliceReadingStage if slices else ArrowStage
    with warnings.catch_warnings():
        # Ray 2.60 names no parameter for actor restarts and deprecates the keyword that sets them.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            actor_class,
            fn_constructor_kwargs={**stage_args, "decode": plan.decode_kwargs} if fused else stage_args,
            batch_size=batch_size,
            compute=actor_pool(lay),
            num_gpus=lay.gpus or None,
            num_cpus=lay.cpus,
            # No restarts, no retries: Ray Data's default (forever) loops on a batch that kills its
            # actor every time and logs an error line on every run; a stage that cannot be built (a
            # bad checkpoint) fails the run with its own error. A lost node is resumed by rerunning.
            max_restarts=0,
            max_task_retries=0,
        )


def run_ray(plan: StagePlan, opts: StageRunOptions, collector: PartCollector) -> None:
    import ray
    import ray.data

    with ray_session(opts.ray_address, verbose=opts.verbose):
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        # In-order output keeps at most about one part buffered on the driver; deskpro's tqdm bar
        # replaces Ray's unless verbose.
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, opts.verbose
        failure = None
        try:
            ds = build_dataset(plan, opts, layout(plan, opts, ray.available_resources()))
            try:
                for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    collector.add(table)
            except Exception as exc:  # re-raised below as a new exception
                failure = failure_of(exc)
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if failure is not None:
            # Raised after dropping every reference to the failed dataset: its actors are released
            # by reference counting, and a caller keeping the original exception (whose traceback
            # holds the executor) would keep them and their CPUs/GPUs busy in a reused Ray.
            del ds
            gc.collect()
            raise failure


class RemoteStageError(RuntimeError):
    """A failure inside Ray, as text only: `description` is what the local loop would say for it."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def failure_of(exc: BaseException) -> BaseException:
    """The exception a run raises for `exc`, holding no reference to Ray's executor.

    The collector's own StageError keeps its type and text; anything from Ray (a stage's own error
    in its constructor or on a batch, a lost node) becomes a RemoteStageError whose description
    names the stage's exception as the local loop would.
    """
    if type(exc) is StageError:
        return StageError(str(exc))
    return RemoteStageError(describe_error(exc))


# A Python exception line in a traceback's text: "ValueError: ...", "_pickle.UnpicklingError: ...".
ERROR_LINE = re.compile(r"^(?:[\w]+\.)*(\w+(?:Error|Exception|Interrupt)): ?(.*)$", re.MULTILINE)


def describe_error(exc: BaseException) -> str:
    """'Type: first line' of a stage's failure, the same under Ray as in the local loop.

    A plain exception is named as raised (its message is the one written for users). Ray carries a
    stage's exception only as text (a RayTaskError's traceback, an actor's creation error): there, the
    last exception line that is not a Ray wrapper is the one the stage raised, its causes above it.
    """
    if isinstance(exc, RemoteStageError):
        return exc.description
    if not _from_ray(exc):
        return f"{type(exc).__name__}: {_first_line(str(exc))}"
    found = [(n, m) for n, m in ERROR_LINE.findall(str(exc)) if n not in RAY_WRAPPERS]
    if found:
        name, message = found[-1]
        return f"{name}: {message.strip()[:300]}"
    return f"{type(exc).__name__}: {_first_line(str(exc))}"


def _from_ray(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("ray.") or type(exc).__name__ in RAY_WRAPPERS


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]
