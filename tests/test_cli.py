"""The command line as a whole: every DESIGN.md command exists, and bad input is one line."""

from click.testing import CliRunner

from deskpro.cli import main

DESIGN_COMMANDS = (
    "manifest",
    "weights",
    "parse",
    "detect",
    "restore",
    "preprocess",
    "pack",
    "verify",
    "train-teacher",
    "train",
    "evaluate",
    "demo",
)


def test_help_lists_every_design_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert set(DESIGN_COMMANDS) <= listed


def test_each_command_has_help():
    for command in DESIGN_COMMANDS:
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage:" in result.output


def test_library_errors_become_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "not-a-checkpoint.pt"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--checkpoint", str(bad)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and str(tmp_path) in lines[0]


def _commands(group=main, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands())


def test_every_command_follows_one_convention():
    """-q/-v everywhere, --progress/--no-progress where there are bars, -o/--out for every output,
    help text for every option and an example in every command's help."""
    for path, command in COMMANDS.items():
        options = {opt: param for param in command.params for opt in getattr(param, "opts", ())}
        name = " ".join(path)
        assert {"-q", "--quiet", "-v", "--verbose"} <= set(options), name
        assert "--no-progress" not in options or "--progress" in options, f"{name}: --no-progress alone"
        assert "--output" not in options, f"{name}: the output is -o/--out"
        if "--out" in options:
            assert "-o" in options["--out"].opts, name
        missing = [
            p.opts[0] for p in command.params if getattr(p, "opts", None) and p.param_type_name == "option"
        ]
        missing = [o for o in missing if not options[o].help and o not in ("--help",)]
        assert not missing, f"{name}: options without help: {missing}"
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name}: no example in --help"


def test_quiet_turns_progress_bars_off_unless_asked():
    from deskpro.cli.group import show_progress

    with main.make_context("deskpro", ["-q", "verify", "x"], resilient_parsing=True) as ctx:
        ctx.meta["deskpro.verbosity"] = -1
        assert show_progress(None) is False and show_progress(True) is True
    assert show_progress(None) is True  # no command running: bars on
