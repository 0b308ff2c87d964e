"""`--config FILE`: option values from a YAML or JSON file, as the defaults of a click command.

The file is a mapping whose keys are the command's option names (`warmup-epochs`, `warmup_epochs`
and the parameter name all work; nested mappings are flattened first by the command's `flatten`
hook when it has one). Its values become click's `default_map`, so every value is converted and
range-checked by the option's own type, and any flag given on the command line overrides it.
A bad file, an unknown key or a bad value is one line naming the file and the key.

Usage on any command:

    @config_file_option()
    @click.option(...)
    def cmd(...): ...
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click


def read_mapping(path: Path) -> dict:
    """The top-level mapping of a .json, .yaml or .yml file; a one-line error otherwise."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise click.BadParameter(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, ImportError) as exc:  # json.JSONDecodeError is a ValueError
        raise click.BadParameter(f"{path}: not valid JSON/YAML: {_first_line(exc)}") from None
    except Exception as exc:  # yaml.YAMLError and its many subclasses
        raise click.BadParameter(f"{path}: not valid YAML: {_first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.BadParameter(
            f"{path}: expected a mapping of option names to values, got {type(data).__name__}"
        )
    return data


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _flag_key(param: click.Option) -> str:
    """The key a file spells an option with, as its long flag (`actors` for --actors, `out` for -o)."""
    longs = [opt[2:] for opt in param.opts if opt.startswith("--")]
    return longs[0] if longs else param.name.replace("_", "-")


def option_index(command: click.Command) -> dict[str, click.Option]:
    """Every spelling of every option of a command (long names without dashes, with - or _, and
    the parameter name) -> the option."""
    index: dict[str, click.Option] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        index[param.name] = param
        for opt in param.opts + param.secondary_opts:
            if opt.startswith("--"):
                index[opt[2:]] = param
                index[opt[2:].replace("-", "_")] = param
    return index


def to_default_map(
    ctx: click.Context, mapping: dict, path: Path, *, exclude: tuple[str, ...] = ()
) -> dict[str, object]:
    """The file's mapping as {parameter name: converted value}, checked against the command.

    Each value goes through the option's type (ranges, choices) now, so that a bad value names the
    file rather than an option the user never typed.
    """
    index = option_index(ctx.command)
    defaults: dict[str, object] = {}
    for key, value in mapping.items():
        param = index.get(str(key))
        if param is None or param.name in exclude:
            known = sorted({_flag_key(p) for p in index.values() if p.name not in exclude})
            raise click.BadParameter(f"{path}: unknown key {key!r}; known: {', '.join(known)}")
        _check_file_value(param, value, path, key)
        try:
            converted = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{path}: key {key!r}: {exc.message}") from None
        if param.name in defaults and defaults[param.name] != converted:
            raise click.BadParameter(f"{path}: {key!r} sets {param.name.replace('_', '-')} a second time")
        defaults[param.name] = converted
    return defaults


def _check_file_value(param: click.Option, value, path: Path, key) -> None:
    """What click would convert but the flag refuses: a file's 2.7 or true for an integer, true for a
    number (click's int() would make them 2 and 1)."""
    kind = param.type
    integer = isinstance(kind, click.types.IntParamType)
    number = integer or isinstance(kind, click.types.FloatParamType)
    if number and isinstance(value, bool):
        raise click.BadParameter(f"{path}: key {key!r}: {value!r} is not a number")
    if integer and isinstance(value, float) and not value.is_integer():
        raise click.BadParameter(f"{path}: key {key!r}: {value!r} is not a whole number")
    flag = isinstance(kind, click.types.BoolParamType) or getattr(param, "is_flag", False)
    if flag and not isinstance(value, bool):
        raise click.BadParameter(f"{path}: key {key!r}: {value!r} is not true or false")


def config_file_option(
    *,
    flatten: Callable[[click.Context, dict, Path], dict] | None = None,
    exclude: tuple[str, ...] = ("config_file",),
    help: str = "YAML or JSON file of option values (keys: the option names); flags given override it.",
):
    """A `--config FILE` option (eager) that loads the file into the command's default_map.

    `flatten(ctx, mapping, path)` may rewrite the file's mapping first (nested sections, keys that are
    not options but must be checked); `exclude` names parameters a file may not set.
    """

    def load(ctx: click.Context, param: click.Parameter, value):
        if value is None:
            return None
        path = Path(value)
        mapping = read_mapping(path)
        if flatten is not None:
            mapping = flatten(ctx, mapping, path)
        ctx.default_map = {**(ctx.default_map or {}), **to_default_map(ctx, mapping, path, exclude=exclude)}
        return path

    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        is_eager=True,
        expose_value=False,
        callback=load,
        help=help,
    )
