"""Every example of every command's --help and of README.md's command blocks, run as written.

The examples are collected at import (tests/_examples.py), so an example added to a help text or
to the README is a new test here, with no edit. Each runs in its own sandbox where the inputs it
names exist (tiny stand-ins, see `StandIns`). Training examples run with `--max-iters 1` and ablate
with `--trials 1` appended (the cap a tiny set needs, not a different command); everything else is
run exactly as printed. A run that fails, or prints a traceback, fails its test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _examples import Example, all_examples
from _examples_inputs import WEIGHTS, StandIns
from click.testing import CliRunner

from deskpro.cli import main

EXAMPLES = all_examples(main)

# What an example gets appended so that it ends on a tiny set (only where the flag is not given).
CAPS = {
    "train": ("--max-iters", "1", "--workers", "0"),
    "train-teacher": ("--max-iters", "1", "--workers", "0"),
    "ablate": ("--max-iters", "1", "--trials", "1", "--workers", "0"),
    # the CPU size trains for tens of minutes: an example without --size runs at the tiny size
    "experiment": ("--size", "tiny", "--seeds", "0"),
}
# Examples that take minutes, or full-size networks on the CPU: run in CI (slow), not in test-fast.
# Training at the official widths is slow on a loaded 2-core machine (about a minute an example).
SLOW_COMMANDS = {"parse", "detect", "restore", "preprocess", "ablate", "demo", "train", "train-teacher"}
SLOW_COMMANDS |= {"experiment", "embed", "search", "export"}
SKIPPED = {
    "deskpro demo": "the full demo trains for about 7 minutes; `make demo` runs it and "
    "test_demo.py runs the same steps with --quick",
}
NET_ROWS = 2


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        os.symlink(source, target)  # a weights file: hundreds of MB, read only


def prepare(example: Example, argv: list[str], sandbox: Path, stand_ins: StandIns) -> None:
    """Make every input that `argv` names, inside `sandbox`."""
    command = example.command
    resume = "--resume" in argv
    positional = [
        a for i, a in enumerate(argv[1:], 1) if not a.startswith("-") and not argv[i - 1].startswith("-")
    ]
    for i, word in enumerate(argv[1:], 1):
        flag = argv[i - 1]
        if word.startswith("-") or (flag in ("-o", "--out") and not resume):
            continue
        path = Path(word)
        target = path if path.is_absolute() else sandbox / path
        if target.exists():
            continue
        if path.name in WEIGHTS:
            _copy(stand_ins.weights(path.name), target)
        elif path.name == "weights":  # weights verify DIR: the one stand-in without a published sha256
            _copy(stand_ins.weights("osnet_x1_0_imagenet.pth"), target / "osnet_x1_0_imagenet.pth")
        elif path.parts[:1] == ("photos",):
            _copy(stand_ins.photos(), sandbox / "photos")
        elif command == ("search",) and word == positional[1]:
            _copy(stand_ins.features(), target)
        elif path.suffix == ".parquet" and command[0] in ("parse", "detect", "restore", "preprocess"):
            stand_ins.manifest(target, NET_ROWS)
        elif command == ("manifest",) and word in positional[2:] and argv[2] == "prcc":
            _copy(stand_ins.dataset(), target)  # the synthetic set is written in the PRCC layout
        elif command == ("pack",) and word == positional[1]:
            _copy(stand_ins.work(), target)
        elif "shards" in path.parts or path.name == "shards":
            _copy(stand_ins.shards(), target)
        elif path.parts[:1] == ("runs",) and len(path.parts) >= 2:
            run = sandbox / "runs" / path.parts[1]
            teacher = "teacher" in path.parts[1] or (resume and command == ("train-teacher",))
            narrow = "--preset" in argv or "osnet_x0_25" in argv  # a teacher of the student's widths
            kind = ("teacher-narrow" if narrow else "teacher") if teacher else "deskpro"
            _copy(stand_ins.run(kind), run)
    if command == ("restore",):  # restore reads the detect stage of its work dir
        from deskpro.pipeline.runner import StageRunOptions, run_stage

        work = sandbox / argv[argv.index("-o") + 1]
        manifest = sandbox / positional[1]
        oracle = {"backend": "oracle", "min_score": 0.0, "min_size": 0.0, "max_center_y": 1.0}
        run_stage("detect", manifest, work, oracle, StageRunOptions(executor="local", progress=False))


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory) -> StandIns:
    return StandIns(tmp_path_factory.mktemp("example-inputs"))


def _marks(example: Example):
    marks = []
    if example.line in SKIPPED:
        marks.append(pytest.mark.skip(reason=SKIPPED[example.line]))
    if example.command[:1] and example.command[0] in SLOW_COMMANDS:
        marks.append(pytest.mark.slow)
    return marks


@pytest.mark.parametrize(
    "example",
    [pytest.param(e, id=f"{e.source}: {e.line}"[:120], marks=_marks(e)) for e in EXAMPLES],
)
def test_example_runs_as_written(example: Example, stand_ins, tmp_path, monkeypatch):
    sandbox = tmp_path / "sandbox"
    home = sandbox / "home"
    home.mkdir(parents=True)
    argv = [str(home) + a[1:] if a.startswith("~/") else a for a in example.argv]
    prepare(example, argv, sandbox, stand_ins)
    for flag, *values in _caps(example, argv):
        argv += [flag, *values]
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(main, argv[1:])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 0, f"{example.source}: {example.line}\n{result.output}"
    if example.redirect:
        (sandbox / example.redirect).write_text(result.output)
        assert result.output.strip()


def _caps(example: Example, argv: list[str]):
    caps = CAPS.get(example.command[0] if example.command else "", ())
    pairs = [caps[i : i + 2] for i in range(0, len(caps), 2)]
    if "--print-config" in argv:
        return []
    return [pair for pair in pairs if pair[0] not in argv]


def test_examples_cover_every_command_and_the_readme():
    """The collection itself: each command's help gives at least one example, and the README's
    command block is collected (a help text or README change cannot drop them unnoticed)."""
    from _examples import help_examples, readme_examples

    by_help = {e.source.removeprefix("help: deskpro ") for e in help_examples(main)}
    commands = set()
    for name, command in main.commands.items():
        subs = getattr(command, "commands", None)
        commands |= {f"{name} {sub}" for sub in subs} if subs else {name}
    assert commands <= by_help, sorted(commands - by_help)
    readme = [e.line for e in readme_examples()]
    assert any(line.startswith("deskpro train ") for line in readme) and len(readme) >= 8
    assert json.dumps([e.line for e in EXAMPLES])  # plain strings: ids stay stable
