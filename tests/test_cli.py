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
