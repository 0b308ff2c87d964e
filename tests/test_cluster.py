"""Ray clusters: address forms, auth and connection errors, quiet runs, the stage layout, extras,
the Dockerfile and docs/cluster.md; the slow part runs a two-node Ray on 127.0.0.1."""

from __future__ import annotations

import configparser
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _pipeline_utils import make_dataset, read_stage

from deskpro.common.optional import MissingExtraError, require
from deskpro.pipeline.options import StageRunOptions
from deskpro.pipeline.ray_executor import (
    RayConnectError,
    RemoteStageError,
    check_address,
    describe_error,
    failure_of,
    layout,
)

REPO = Path(__file__).resolve().parents[1]
ray = pytest.importorskip("ray")
ORACLE_PARSE = ["--parser", "oracle", "--part-size", "4", "--batch-size", "2", "--no-progress"]


# ---- fast: no Ray started


def test_require_names_the_extra_in_one_line():
    assert require("json", "cluster").dumps([]) == "[]"
    with pytest.raises(MissingExtraError) as info:
        require("deskpro_no_such_module", "tensorboard", "--tensorboard")
    message = str(info.value)
    assert "\n" not in message and "pip install 'deskpro[tensorboard]'" in message
    assert message.startswith("--tensorboard needs") and "deskpro_no_such_module" in message


def test_setup_cfg_declares_the_cluster_and_tensorboard_extras():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extras = cfg["options.extras_require"]
    assert "ray[default]" in extras["cluster"]
    assert "tensorboard" in extras["tensorboard"]


def test_ray_client_addresses_are_refused_with_what_to_use():
    with pytest.raises(RayConnectError) as info:
        check_address("ray://head:10001")
    message = str(info.value)
    assert "\n" not in message and "ray job submit" in message and "--ray-address auto" in message
    check_address("auto")
    check_address("10.0.0.1:6379")


class _Images:
    needs_images = True


class _Plan:
    def __init__(self, backend: str, device: str = "auto", stage_class: type = _Images) -> None:
        self.kwargs = {"backend": backend, "device": device}
        self.stage_class = stage_class


def test_layout_light_stages_are_tasks_networks_fill_the_free_cpus_or_the_gpus():
    cpus = {"CPU": 2.0}
    opts = StageRunOptions()
    assert layout(_Plan("oracle"), opts, cpus).kind == "tasks"
    cpu = layout(_Plan("schp"), opts, cpus)
    assert (cpu.kind, cpu.actors, cpu.gpus) == ("cpu-actors", 2, 0.0)
    assert layout(_Plan("schp"), StageRunOptions(num_cpus=2.0), {"CPU": 5.0}).actors == 2
    gpu = layout(_Plan("schp"), opts, {"CPU": 16.0, "GPU": 4.0})
    assert (gpu.kind, gpu.actors, gpu.gpus) == ("gpu-actors", 4, 1.0)
    assert layout(_Plan("schp"), StageRunOptions(num_gpus=0.25), {"CPU": 16.0, "GPU": 2.0}).actors == 8
    assert layout(_Plan("schp", "cpu"), opts, {"CPU": 3.0, "GPU": 1.0}).kind == "cpu-actors"
    explicit = layout(_Plan("schp"), StageRunOptions(num_actors=3), cpus)
    assert explicit.actors == 3
    assert layout(_Plan("oracle"), StageRunOptions(num_actors=2), cpus).kind == "cpu-actors"


def test_pools_start_the_actors_that_fit_now_and_grow_to_the_rest():
    # Every actor that fits starts at once (each takes seconds to start), at least one, never more
    # than fit in the free resources (a pool waiting for CPUs that a previous stage still holds).
    assert layout(_Plan("schp"), StageRunOptions(), {"CPU": 2.0}).initial == 2
    explicit = layout(_Plan("schp"), StageRunOptions(num_actors=4), {"CPU": 2.0})
    assert (explicit.actors, explicit.initial) == (4, 2)
    busy = layout(_Plan("schp"), StageRunOptions(num_actors=2), {})
    assert (busy.actors, busy.initial) == (2, 1)
    # GPU actors behind decoding tasks leave the decoding a CPU: 3 CPUs start 2 of the 4 actors.
    gpu = layout(_Plan("schp"), StageRunOptions(), {"CPU": 3.0, "GPU": 4.0})
    assert (gpu.actors, gpu.initial) == (4, 2)
    assert layout(_Plan("schp"), StageRunOptions(num_gpus=0.5), {"CPU": 16.0, "GPU": 1.0}).initial == 2
    packed = layout(_Plan("schp"), StageRunOptions(num_gpus=0.25, num_actors=8), {"CPU": 8.0, "GPU": 2.0})
    assert (packed.actors, packed.initial) == (8, 7)  # docs/cluster.md's example on an 8-CPU node


def test_a_stage_error_inside_ray_is_named_as_the_local_loop_names_it():
    local = ValueError("/w/bad.pth: cannot be read as a weights-only torch checkpoint: bad\nmore lines")
    text = (
        "The actor died because of an error raised in its creation task, ray::MapWorker.__init__()\n"
        '  File "torch/serialization.py", line 1640, in load\n'
        "_pickle.UnpicklingError: bad\n\nThe above exception was the direct cause of the following:\n"
        "ray::MapWorker(MapBatches(DecodingStage)).__init__() (pid=1)\n"
        f"ValueError: {local}\n"
    )
    remote = ray.exceptions.ActorDiedError()
    remote.error_msg = text
    failure = failure_of(remote)
    assert isinstance(failure, RemoteStageError)
    assert describe_error(failure) == describe_error(local)
    assert describe_error(local).startswith("ValueError: /w/bad.pth: cannot be read")


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _documented_ray_is_current(version: str) -> None:
    """The image and docs name one Ray release, of the installed major version and not newer (a pip
    install may bring a later release than the one the docs were written against)."""
    installed = _release(ray.__version__)
    assert _release(version)[0] == installed[0] and _release(version) <= installed, (version, ray.__version__)


def test_the_dockerfile_base_image_is_the_installed_ray():
    text = (REPO / "Dockerfile").read_text()
    version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.MULTILINE).group(1)
    _documented_ray_is_current(version)
    docs = (REPO / "docs" / "cluster.md").read_text()
    assert re.search(r"rayproject/ray:(\S+?)-py", docs).group(1) == version
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}-\$\{VARIANT\}$", text, re.M)
    assert '".[cluster]"' in text
    ignored = (REPO / ".dockerignore").read_text()
    assert "!deskpro/" in ignored


def test_docs_cluster_yaml_blocks_parse_and_match_the_installed_ray():
    text = (REPO / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        job = yaml.safe_load(block)
        assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
        cluster = job["spec"]["rayClusterSpec"]
        _documented_ray_is_current(cluster["rayVersion"])
        assert cluster["enableInTreeAutoscaling"] is True
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            pod = group["template"]["spec"]
            assert pod["tolerations"] and pod["volumes"]
        assert job["spec"]["entrypoint"].startswith("deskpro ")
    docker = re.search(r"rayproject/ray:(\S+?)-py", text).group(1)
    assert all(yaml.safe_load(b)["spec"]["rayClusterSpec"]["rayVersion"] == docker for b in blocks)


# ---- slow: a two-node Ray on 127.0.0.1 started by the tests


TOKEN = "deskpro0test0token0" + "0123456789abcdef0123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=TOKEN,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
    )
    env.update(extra)
    return env


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node (1 CPU each, token auth) in the foreground (`ray start --block`), so
    that terminating the two processes stops exactly this cluster (`ray stop` would stop every Ray
    of the machine's user, other people's test runs included)."""
    logs = tmp_path_factory.mktemp("cluster")
    port, dashboard = _free_port(), _free_port()
    common = ["--block", "--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", "127.0.0.1"]
    head = [
        _ray_cli(), "start", "--head", "--port", str(port), "--include-dashboard", "true",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            head + common, env=_env(), stdout=open(logs / "head.log", "w"), stderr=subprocess.STDOUT
        )
    ]
    try:
        _wait_for(logs / "head.log", "Ray runtime started", procs[0])
        worker = [_ray_cli(), "start", "--address", f"127.0.0.1:{port}"]
        worker += ["--dashboard-agent-listen-port", str(_free_port())]
        procs.append(
            subprocess.Popen(
                worker + common, env=_env(), stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT
            )
        )
        _wait_for(logs / "worker.log", "Ray runtime started", procs[1])
        _wait_for_nodes(port, 2)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"ray start exited: {log.read_text()[-2000:]}")
        time.sleep(1)
    pytest.fail(f"ray start did not come up in {timeout} s: {log.read_text()[-2000:]}")


def _wait_for_nodes(port: int, count: int, timeout: float = 120) -> None:
    code = (
        "import sys, time, ray; ray.init(address=sys.argv[1], logging_level='ERROR');"
        "t = time.time()\nwhile len([n for n in ray.nodes() if n['Alive']]) < int(sys.argv[2]):"
        "\n    assert time.time() - t < 100; time.sleep(1)"
    )
    subprocess.run(
        [sys.executable, "-c", code, f"127.0.0.1:{port}", str(count)], env=_env(), check=True, timeout=timeout
    )


def _deskpro(args: list[str], env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deskpro", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster-data")
    _, manifest = make_dataset(base)
    return manifest


@pytest.mark.slow
@pytest.mark.parametrize("form", ["HOST:PORT", "auto"])
def test_a_stage_on_the_two_node_cluster_matches_the_local_loop_and_prints_only_deskpro(
    cluster, dataset, tmp_path, form
):
    local = _deskpro(
        ["parse", str(dataset), "-w", str(tmp_path / "local"), "--executor", "local", *ORACLE_PARSE], _env()
    )
    assert local.returncode == 0, local.stderr
    address = cluster["address"] if form == "HOST:PORT" else "auto"
    # `auto` finds the cluster through RAY_ADDRESS, as it does inside `ray job submit`, so that another
    # Ray started on this machine meanwhile cannot be picked instead.
    env = _env(RAY_ADDRESS=cluster["address"]) if form == "auto" else _env()
    run = _deskpro(
        ["parse", str(dataset), "-w", str(tmp_path / "ray"), "--ray-address", address, *ORACLE_PARSE], env
    )
    assert run.returncode == 0, run.stderr
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parse: 18 rows, 0 errors"), lines
    assert read_stage(tmp_path / "ray", "parse").equals(read_stage(tmp_path / "local", "parse"))


@pytest.mark.slow
def test_a_bad_checkpoint_on_the_cluster_is_the_local_loops_one_line(cluster, dataset, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    args = [
        "parse",
        str(dataset),
        "--parser",
        "schp",
        "--weights",
        str(bad),
        "--no-progress",
        "--device",
        "cpu",
    ]
    local = _deskpro([*args, "-w", str(tmp_path / "local"), "--executor", "local"], _env())
    remote = _deskpro([*args, "-w", str(tmp_path / "ray"), "--ray-address", cluster["address"]], _env())
    assert local.returncode == remote.returncode == 1
    assert remote.stdout == "" and len(remote.stderr.strip().splitlines()) == 1, remote.stderr
    assert remote.stderr == local.stderr
    assert "bad.pth: cannot be read" in remote.stderr


@pytest.mark.slow
def test_auth_and_connection_failures_are_one_line_each(cluster, dataset, tmp_path):
    args = ["parse", str(dataset), "-w", str(tmp_path), *ORACLE_PARSE, "--ray-address"]
    cases = {
        "wrong token": (_env(RAY_AUTH_TOKEN="wrong" * 8), cluster["address"], "RAY_AUTH_TOKEN"),
        "no token": (_env(RAY_AUTH_MODE="disabled"), cluster["address"], "set RAY_AUTH_MODE=token"),
        "nothing there": (_env(), f"127.0.0.1:{_free_port()}", "ray start --head"),
        "ray client": (_env(), "ray://127.0.0.1:10001", "ray job submit"),
    }
    for name, (env, address, hint) in cases.items():
        start = time.monotonic()
        run = _deskpro([*args, address], env, timeout=180)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and len(lines) == 1 and hint in lines[0], (name, run.stderr)
        assert "rerun" not in lines[0] and time.monotonic() - start < 150, name


@pytest.mark.slow
def test_ray_job_submit_runs_the_command_on_the_cluster(cluster, dataset, tmp_path):
    work = tmp_path / "work"
    entry = [sys.executable, "-m", "deskpro", "parse", str(dataset), "-w", str(work), *ORACLE_PARSE]
    submit = [_ray_cli(), "job", "submit", "--address", cluster["dashboard"], "--", *entry]
    run = subprocess.run(submit, env=_env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "parse: 18 rows, 0 errors" in run.stdout
    assert len(read_stage(work, "parse")) == 18


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


LINGER_S = 240


@pytest.mark.slow
def test_a_killed_command_leaves_no_local_ray_processes(dataset, tmp_path):
    code = (
        "import time, deskpro.pipeline.runner as r\n"
        "from deskpro.pipeline.stages import ParseStage\n"
        "class Slow(ParseStage):\n"
        "    def __call__(self, batch):\n"
        "        time.sleep(60); return super().__call__(batch)\n"
        "r.run_stage('parse', {m!r}, {w!r}, {{'backend': 'oracle'}}, "
        "r.StageRunOptions(executor='ray', part_size=4, batch_size=2, progress=False), stage_class=Slow)\n"
    ).format(m=str(dataset), w=str(tmp_path / "w"))
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stderr=subprocess.DEVNULL)
    deadline, helpers = time.monotonic() + 240, set()
    while time.monotonic() < deadline and not any("raylet" in _cmdline(p) for p in helpers):
        time.sleep(2)
        helpers = _descendants(proc.pid)
    assert any("raylet" in _cmdline(p) for p in helpers), "the local Ray did not start"
    time.sleep(10)  # let it start workers too
    helpers = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # gcs_server and raylet go with the driver; Ray's dashboard agent notices its raylet is gone and
    # then tries to report to the dead GCS before it exits: a minute or two on a busy machine.
    deadline = time.monotonic() + LINGER_S
    while time.monotonic() < deadline and any(_alive(p) for p in helpers):
        time.sleep(2)
    assert not [(p, _cmdline(p)[:60]) for p in helpers if _alive(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
