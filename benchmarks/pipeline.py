"""Benchmark of the preprocessing pipeline on a synthetic set: Ray against the plain loop, pack, memory.

Measures, on one machine:
- per stage, images/s through Ray Data (decode tasks + an actor pool) and through the same stage
  class called in a plain loop (`--executor local`): Ray's overhead on one machine. Backends are the
  oracle/none ones (no model compute) and, with --net, a random-weight RetinaFace mobilenet0.25 so
  that there is real compute per image (its detections mean nothing; only the speed is measured),
  with --parser-net a random-weight SCHP (about 30x mobilenet0.25's time per image);
- with --net-images, the detector again on larger sets: Ray's fixed cost per run, its marginal rate,
  and the set size from which Ray reaches 0.9x the loop;
- `deskpro.shards.pack.pack` throughput and shard bytes per image against the source JPEGs;
- peak RSS of the driver and all its descendant processes (the local Ray's workers) while a Ray
  stage runs over 1x and `--scale`x the data: a stage holds a bounded number of batches;
- with --nodes, scaling of the network stage on a local cluster of 1 and 2 one-CPU nodes
  (`ray start --block` on 127.0.0.1, token auth), against the plain loop on one CPU.

Every Ray/loop pair runs `--repeats` times, alternating, and the table gives the ratio's min and
median. Other processes on the machine (say which) shift both sides of a pair alike.

    python benchmarks/pipeline.py --images 120 --net --nodes --json bench.json
    python benchmarks/pipeline.py --net --net-only --images 240 --net-images 960 2400 --json ray-size.json
    python benchmarks/pipeline.py --net-only --parser-net --images 240 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Oracle/none backends (no model compute); the oracle's faces all pass a permissive face policy.
LOOSE = {"min_score": 0.0, "min_size": 0.0, "max_center_y": 1.0}
ORACLE = {
    "parse": {"backend": "oracle"},
    "detect": {"backend": "oracle", **LOOSE},
    "restore": {"backend": "none"},
}

# ---- process memory


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _pss(pid: int) -> int:
    """Proportional set size in bytes: shared pages (torch, Ray libraries) split among processes."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(root_pid: int) -> int:
    """Memory (PSS bytes) of a process and all its descendants (Linux /proc): driver + local Ray."""
    children, total, todo = _children_map(), 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        total += _pss(pid)
    return total


class PeakRSS:
    """Samples tree_rss of this process every `interval` seconds while in the `with` block."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(os.getpid()))


# ---- data


def make_set(base: Path, images: int, name: str) -> tuple[Path, Path]:
    """A synthetic PRCC-layout set of about `images` images (384x128) and its manifest."""
    from deskpro.manifests import scan, write_manifest
    from deskpro.synthetic import generator as synthetic

    per_camera = 2
    identities = max(3, round(images / (3 * per_camera)))
    root = synthetic.generate(
        base / name, identities=identities, images_per_camera=per_camera, progress=False
    )
    manifest = base / f"{name}.parquet"
    write_manifest(scan("synthetic", root), manifest)
    return root, manifest


def source_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "rgb").rglob("*.jpg"))


def random_retinaface(base: Path) -> str:
    import torch

    from deskpro.pipeline.nets import retinaface

    torch.manual_seed(0)  # fills a stand-in checkpoint; speed only
    path = base / "mobilenet0.25_random.pth"
    torch.save(retinaface.build("mobilenet0.25").state_dict(), path)
    return str(path)


# ---- runs


def random_schp(base: Path) -> str:
    import torch

    from deskpro.pipeline.nets import schp

    torch.manual_seed(0)  # a stand-in checkpoint in the official layout; speed only
    path = base / "schp_lip_random.pth"
    torch.save(schp.build("lip").state_dict(), path)
    return str(path)


PARSER_SIZE = 233  # SCHP's input side here: the CPU size of benchmarks/nets.py (official: 473)
PARSER_LABEL = f"schp (random, {PARSER_SIZE}^2)"


def parser_options(base: Path) -> dict:
    return {"backend": "schp", "weights": random_schp(base), "input_size": PARSER_SIZE, "device": "cpu"}


def net_options(base: Path) -> dict:
    weights = random_retinaface(base)
    return {"backend": "retinaface-mobilenet0.25", "weights": weights, "device": "cpu", **LOOSE}


NET_LABEL = "retinaface-mobilenet0.25 (random)"


def stage_plan(args, base: Path) -> list[tuple[str, str, dict]]:
    plan = [] if args.net_only else [(stage, opts["backend"], opts) for stage, opts in ORACLE.items()]
    if args.net:
        plan.append(("detect", NET_LABEL, net_options(base)))
    if args.parser_net:
        plan.append(("parse", PARSER_LABEL, parser_options(base)))
    return plan


def run_once(
    stage: str, manifest: Path, work: Path, options: dict, executor: str, args, address: str | None = None
) -> dict:
    from deskpro.pipeline.options import StageRunOptions
    from deskpro.pipeline.runner import run_stage

    run = StageRunOptions(
        part_size=args.part_size,
        batch_size=args.batch_size,
        executor=executor,
        num_actors=args.actors,
        ray_address=address,
        overwrite=True,
        progress=False,
    )
    with PeakRSS() as mem:
        summary = run_stage(stage, manifest, work, options, run)
    return {
        "images_per_s": summary.images_per_s,
        "seconds": summary.seconds,
        "rows": summary.rows,
        "peak_rss_mib": mem.peak / 2**20,
    }


def bench_stages(args, base: Path, manifest: Path) -> list[dict]:
    # The detect stage imports torch (seconds): a one-time cost of this process, which would
    # otherwise be billed to the first local detect run as if it were the loop's speed.
    import deskpro.pipeline.nets.retinaface  # noqa: F401
    from deskpro.manifests import read_manifest

    runs = [(stage, label, options, manifest) for stage, label, options in stage_plan(args, base)]
    for size in args.net_images:  # the network stage again on larger sets: Ray's fixed cost per run
        runs.append(("detect", NET_LABEL, net_options(base), make_set(base, size, f"net{size}")[1]))
    rows = []
    for stage, label, options, run_manifest in runs:
        images = len(read_manifest(run_manifest))
        work = base / f"work-{stage}-{label.split()[0]}-{images}"
        if stage == "restore":  # restore reads detect's outputs: make them once per work dir
            for executor in ("local", "ray"):
                run_once("detect", run_manifest, work / executor, ORACLE["detect"], "local", args)
        result = {"stage": stage, "backend": label, "images": images, "local": [], "ray": []}
        for _ in range(args.repeats):  # alternating, so that load from elsewhere hits both alike
            for executor in ("local", "ray"):
                run = run_once(stage, run_manifest, work / executor, options, executor, args)
                result[executor].append(run)
        ratios = sorted(
            r["images_per_s"] / max(lo["images_per_s"], 1e-9) for r, lo in zip(result["ray"], result["local"])
        )
        result["ray_vs_local"] = {"min": ratios[0], "median": statistics.median(ratios), "all": ratios}
        rows.append(result)
        print(
            f"  {stage:8s} {label:36s} {images:6d} local {_median(result['local']):8.1f} img/s   "
            f"ray {_median(result['ray']):8.1f} img/s   "
            f"ray/local median {result['ray_vs_local']['median']:.2f}",
            flush=True,
        )
    return rows


def _median(runs: list[dict]) -> float:
    return statistics.median(r["images_per_s"] for r in runs)


def fixed_cost(rows: list[dict], target: float = 0.9) -> dict | None:
    """Ray's time per run as fixed + images / rate (least squares over the network stage's set sizes,
    median seconds per size), the loop's rate, and the smallest set on which Ray reaches `target`x
    the loop (None: never, its marginal rate is too low)."""
    net = [r for r in rows if r["backend"] == NET_LABEL]
    if len({r["images"] for r in net}) < 2:
        return None
    n = [r["images"] for r in net]
    ray_s = [statistics.median(x["seconds"] for x in r["ray"]) for r in net]
    slope, fixed = statistics.linear_regression(n, ray_s)
    if slope <= 0:  # noise on sets too close in size: no rate to speak of
        return None
    loop_rate = sum(n) / sum(statistics.median(x["seconds"] for x in r["local"]) for r in net)
    gain = 1 / loop_rate - target * slope  # per image: the loop's time minus target x Ray's
    return {
        "ray_fixed_s": fixed,
        "ray_images_per_s": 1 / slope,
        "loop_images_per_s": loop_rate,
        "target": target,
        "break_even_images": target * fixed / gain if gain > 0 else None,
    }


# ---- a local multi-node cluster


TOKEN = "deskpro0bench0token0" + "0123456789abcdef012"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(nodes: int, logs: Path) -> tuple[str, list[subprocess.Popen]]:
    """`nodes` one-CPU Ray nodes on 127.0.0.1 in the foreground; terminate the processes to stop it."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    common = ["--block", "--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", "127.0.0.1"]
    procs = []
    for i in range(nodes):
        role = ["--head", "--port", str(port)] if i == 0 else ["--address", f"127.0.0.1:{port}"]
        role += ["--dashboard-agent-listen-port", str(_free_port())]
        if i == 0:
            role += ["--ray-client-server-port", str(_free_port()), "--include-dashboard", "false"]
        log = logs / f"node{i}.log"
        with open(log, "w") as out:
            command = [ray_cli, "start", *role, *common]
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=out))
        deadline = time.monotonic() + 240
        while "Ray runtime started" not in log.read_text():
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                stop_cluster(procs)
                raise SystemExit(f"ray start failed: {log.read_text()[-1500:]}")
            time.sleep(1)
    return f"127.0.0.1:{port}", procs


def stop_cluster(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=60)


def bench_scaling(args, base: Path, manifest: Path) -> list[dict]:
    """The network stage (one actor per node's CPU) on 1 and 2 local nodes, and the loop on 1 CPU."""
    import ray
    import torch

    label, options = NET_LABEL, net_options(base)
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the loop on one CPU, as one actor has
    try:
        work = base / "scale-local"
        loop = [run_once("detect", manifest, work, options, "local", args) for _ in range(args.repeats)]
    finally:
        torch.set_num_threads(threads)
    for nodes in (1, 2):
        address, procs = start_cluster(nodes, base)
        try:
            runs = []
            for _ in range(args.repeats):
                work = base / f"scale-{nodes}"
                runs.append(run_once("detect", manifest, work, options, "ray", args, address))
            ray.shutdown()
        finally:
            stop_cluster(procs)
        out.append({"nodes": nodes, "ray": runs, "loop_1cpu": loop, "backend": label})
        print(f"  {nodes} node(s): {_median(runs):.1f} img/s (loop on 1 CPU {_median(loop):.1f})", flush=True)
    return out


def bench_pack(args, base: Path, root: Path, manifest: Path) -> dict:
    from deskpro.pipeline.options import StageRunOptions
    from deskpro.pipeline.runner import run_preprocess
    from deskpro.shards.pack import pack

    work = base / "work-pack"
    options = StageRunOptions(part_size=args.part_size, executor="local", progress=False)
    run_preprocess(manifest, work, ORACLE, options)
    start = time.perf_counter()
    summary = pack(
        work,
        base / "shards",
        body_size=(384, 128),
        face_size=224,
        codec="jpeg",
        jpeg_quality=95,
        shard_size=1024,
        progress=False,
    )
    seconds = time.perf_counter() - start
    shard_bytes = sum(p.stat().st_size for p in (base / "shards").rglob("*") if p.is_file())
    images = summary.rows
    return {
        "rows": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "shard_bytes_per_image": shard_bytes / images,
        "source_bytes_per_image": source_bytes(root) / images,
        "with_face": summary.with_face,
    }


def bench_memory(args, base: Path, first: tuple[Path, Path]) -> list[dict]:
    """Peak memory of a Ray parse run over 1x and scale x the data, and the run times.

    Runs first, on a fresh Ray, so that idle workers of other runs do not blur the figures; the
    two run times also give Ray's marginal throughput and its fixed cost per run.
    """
    out = []
    # One discarded run first: the first Ray Data run of a session also starts worker processes.
    run_once("parse", first[1], base / "mem-warmup", ORACLE["parse"], "ray", args)
    for factor in (1, args.scale):
        _, manifest = first if factor == 1 else make_set(base, args.images * factor, f"x{factor}")
        idle = tree_rss(os.getpid())
        result = run_once("parse", manifest, base / f"mem-x{factor}", ORACLE["parse"], "ray", args)
        out.append(
            {
                "factor": factor,
                "rows": result["rows"],
                "peak_mib": result["peak_rss_mib"],
                "idle_mib": idle / 2**20,
                "seconds": result["seconds"],
            }
        )
    return out


def format_table(report: dict) -> str:
    lines = [
        f"Pipeline benchmark: {report['images']} synthetic images 384x128, batch {report['batch_size']}, "
        f"part {report['part_size']}, {report['actors'] or 'default'} actor(s), {report['cpus']} CPUs; "
        f"Ray start {report['ray_start_s']:.1f} s (not in the figures)",
        "",
        f"{'stage':8s} {'backend':36s} {'images':>6s} {'local img/s':>12s} {'ray img/s':>10s} "
        f"{'ray/local min':>13s} {'median':>7s}",
    ]
    for r in report["stages"]:
        ratio = r["ray_vs_local"]
        lines.append(
            f"{r['stage']:8s} {r['backend']:36s} {r['images']:6d} {_median(r['local']):12.1f} "
            f"{_median(r['ray']):10.1f} {ratio['min']:13.2f} {ratio['median']:7.2f}"
        )
    fit = report.get("fixed_cost")
    if fit:
        even = fit["break_even_images"]
        lines += [
            "",
            f"network stage, Ray = {fit['ray_fixed_s']:.1f} s per run + images / "
            f"{fit['ray_images_per_s']:.1f} img/s; loop {fit['loop_images_per_s']:.1f} img/s; "
            f"Ray reaches {fit['target']:g}x the loop from "
            + (f"{even:.0f} images" if even else "no size (its marginal rate is too low)"),
        ]
    if report.get("scaling"):
        lines += ["", "network stage on a local cluster of one-CPU nodes (median img/s over the repeats):"]
        one = _median(report["scaling"][0]["ray"])
        for r in report["scaling"]:
            lines.append(
                f"  {r['nodes']} node(s): {_median(r['ray']):6.1f} img/s = "
                f"{_median(r['ray']) / one:.2f}x one node; "
                f"plain loop on 1 CPU {_median(r['loop_1cpu']):.1f} img/s"
            )
    p = report.get("pack")
    if p:
        lines += [
            "",
            f"pack: {p['rows']} images in {p['seconds']:.1f} s = {p['images_per_s']:.1f} img/s; "
            f"shards {p['shard_bytes_per_image'] / 1024:.1f} KiB/image vs source JPEG "
            f"{p['source_bytes_per_image'] / 1024:.1f} KiB/image",
        ]
    if not report.get("memory"):
        return "\n".join(lines)
    lines += ["", "memory (PSS of driver + local Ray processes) during a Ray parse (oracle) run:"]
    for m in report["memory"]:
        lines.append(
            f"  {m['factor']}x data ({m['rows']:4d} images): peak {m['peak_mib']:.0f} MiB, "
            f"{m['peak_mib'] - m['idle_mib']:+.0f} MiB over idle; {m['seconds']:.1f} s"
        )
    one, big = report["memory"][0], report["memory"][-1]
    if big["seconds"] > one["seconds"]:
        marginal = (big["rows"] - one["rows"]) / (big["seconds"] - one["seconds"])
        lines.append(
            f"  Ray parse (oracle) marginal throughput {marginal:.1f} img/s; fixed cost per run "
            f"(actor start, planning) {one['seconds'] - one['rows'] / marginal:.1f} s"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="images in the base set")
    parser.add_argument("--scale", type=int, default=4, help="data multiple for the memory check")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--part-size", type=int, default=64)
    parser.add_argument("--actors", type=int, default=None, help="default: deskpro's (free CPUs)")
    parser.add_argument("--repeats", type=int, default=3, help="Ray/loop pairs per stage")
    parser.add_argument("--nodes", action="store_true", help="with --net: scaling on 1 and 2 local nodes")
    parser.add_argument("--net", action="store_true", help="add a random-weight RetinaFace mobilenet0.25 run")
    parser.add_argument(
        "--net-images",
        type=int,
        nargs="*",
        default=[],
        help="the detector (as --net) again on sets of these sizes: Ray's fixed cost and break-even",
    )
    parser.add_argument(
        "--net-only", action="store_true", help="no light stages, memory or pack: only --net and --parser-net"
    )
    parser.add_argument(
        "--parser-net", action="store_true", help=f"add a random-weight SCHP parse run ({PARSER_SIZE}^2)"
    )
    parser.add_argument("--no-pack", action="store_true", help="skip the pack benchmark")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--dir", type=Path, default=None, help="scratch dir (default: a temporary one)")
    args = parser.parse_args()
    if args.nodes:
        # The clusters' token, for this driver too: Ray reads it once, when it is imported.
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)

    from deskpro.pipeline.ray_executor import ray_session

    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        root, manifest = make_set(base, args.images, "x1")
        start = time.perf_counter()
        with ray_session():
            import ray

            ray_start = time.perf_counter() - start
            report = {
                "images": sum(1 for _ in (root / "rgb").rglob("*.jpg")),
                "batch_size": args.batch_size,
                "part_size": args.part_size,
                "actors": args.actors,
                "ray_start_s": ray_start,
                "cpus": int(ray.cluster_resources().get("CPU", 0)),
            }
            if not args.net_only:
                report["memory"] = bench_memory(args, base, (root, manifest))
            report["stages"] = bench_stages(args, base, manifest)
            report["fixed_cost"] = fixed_cost(report["stages"])
        if args.nodes and args.net:
            report["scaling"] = bench_scaling(args, base, manifest)
        if not (args.no_pack or args.net_only):
            report["pack"] = bench_pack(args, base, root, manifest)
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
