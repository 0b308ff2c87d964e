"""The Ray executor of a stage run: Ray Data decodes images in tasks and runs the stage in an actor pool.

Ray is imported only inside these functions: the in-process executor (deskpro.pipeline.plan) needs none.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
from collections.abc import Iterator

from deskpro.common import images
from deskpro.pipeline.plan import (
    ArrowStage,
    PartCollector,
    StageError,
    StagePlan,
    StageRunOptions,
    part_path,
    source_tables,
)
from deskpro.pipeline.stages import (
    NO_NET_BACKENDS,
)

# CPUs per image-decoding task: decoding is light and I/O-bound, and a value different from the
# actors' keeps Ray from fusing decoding into the model actors, so it scales on its own.
DECODE_CPUS = 0.5


RAY_WRAPPERS = frozenset({"RayTaskError", "UserCodeException", "RayError", "RaySystemError"})


def wants_gpu(kwargs: dict) -> bool:
    backend = str(kwargs.get("backend", ""))
    return backend not in NO_NET_BACKENDS and str(kwargs.get("device", "auto")) != "cpu"


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for one command: reuse a running one, join `address`, or start a quiet local one."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting from a local start
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    try:
        yield
    finally:
        ray.shutdown()


def ray_source(plan: StagePlan, batch_size: int):
    """The input dataset: manifest rows (ids and paths, small) from the driver; restore's input, which
    holds the face crops, read from detect's part files by the workers so that it streams."""
    import ray.data

    if plan.upstream_dir is None:
        return ray.data.from_arrow(list(source_tables(plan, batch_size)))
    files = [str(part_path(plan.upstream_dir, i)) for i in plan.missing]
    return ray.data.read_parquet(files).select_columns(list(plan.stage_class.input_columns))


def run_ray(plan: StagePlan, opts: StageRunOptions, collector: PartCollector) -> None:
    import ray
    import ray.data

    # ray.data configures its loggers on import; quiet its per-dataset INFO lines after that.
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    with ray_session(opts.ray_address):
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        # In-order output keeps at most about one part buffered on the driver; our tqdm bar replaces Ray's.
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
        try:
            num_gpus = opts.num_gpus
            if num_gpus is None:
                num_gpus = (
                    1.0 if wants_gpu(plan.kwargs) and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
                )
            ds = ray_source(plan, opts.batch_size)
            if plan.stage_class.needs_images:
                ds = ds.map_batches(
                    images.decode_batch,
                    fn_kwargs=plan.decode_kwargs,
                    batch_size=opts.batch_size,
                    num_cpus=DECODE_CPUS,
                )
            ds = ds.map_batches(
                ArrowStage,
                fn_constructor_kwargs={"stage_class": plan.stage_class, "kwargs": plan.kwargs},
                batch_size=opts.batch_size,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=opts.num_actors),
                num_gpus=num_gpus or None,
                num_cpus=opts.num_cpus,
            )
            failure = None
            try:
                for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    collector.add(table)
            except Exception as exc:  # re-raised below as a new exception
                # The collector's own StageError keeps its type, as in the local loop; a stage's
                # exception arrives wrapped by Ray, in a class that may also derive from StageError.
                if type(exc) is StageError:
                    failure = StageError(str(exc))
                else:
                    failure = RuntimeError(describe_error(exc))
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
    if failure is not None:
        # Raised as a new exception holding text only, after dropping every reference to the failed
        # dataset: its actors are released by reference counting, and a caller keeping the original
        # exception (whose traceback holds the executor) would keep them and their CPUs/GPUs busy in
        # a reused Ray.
        del ds
        gc.collect()
        raise failure


def describe_error(exc: BaseException) -> str:
    """'Type: first line' of the error that started it all.

    Ray wraps a stage's own exception (RayTaskError, UserCodeException) and carries the original only
    as text in the remote traceback: the first error line there that is not a wrapper is the cause.
    """
    for name, message in re.findall(r"^(\w+(?:Error|Exception)): (.*)$", str(exc), flags=re.MULTILINE):
        if name not in RAY_WRAPPERS:
            return f"{name}: {message.strip()[:300]}"
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first_line}"
