"""The examples of the documentation, collected so that tests/test_examples.py runs each one.

Sources: every command's --help (the lines under "Example:" in its help or epilog) and every fenced
command block of README.md (lines that start with `deskpro`). Backslash continuations are joined,
`# comments` dropped. Examples added later are picked up without touching the tests.

Each example runs in its own sandbox folder (the working directory; `~` is sandbox/home) where
`StandIns` has first made the inputs the example names: a synthetic dataset in the PRCC layout and
its manifest, a work dir of the oracle stages, tiny shards, finished/unfinished training runs, and
official weight files rebuilt from their key layouts (tests/data/reference) with seeded random
values. The expensive pieces are made once per session and copied.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Example:
    source: str  # "help: deskpro train" or "README.md:64"
    line: str  # the command line, continuations joined

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.line.split(" > ")[0])

    @property
    def redirect(self) -> str | None:
        """`> FILE` at the end of the line: where its output goes."""
        return self.line.split(" > ", 1)[1].strip() if " > " in self.line else None

    @property
    def command(self) -> tuple[str, ...]:
        """The (sub)command words: ("weights", "list"), ("train",)."""
        words = []
        for word in self.argv[1:]:
            if word.startswith("-") or "/" in word or "." in word:
                break
            words.append(word)
        return tuple(words[:2]) if words[:1] in (["weights"], ["visualize"]) else tuple(words[:1])


def _joined(lines: list[str]) -> list[str]:
    """Lines with their backslash continuations joined, comments dropped."""
    out, current = [], ""
    for raw in lines:
        line = re.sub(r"\s+#\s.*$", "", raw.rstrip())
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        out.append((current + line.strip()).strip())
        current = ""
    return out


def help_examples(group: click.Group, path: tuple[str, ...] = ()) -> list[Example]:
    """The example lines of every command's help, depth first."""
    found = []
    for name, command in group.commands.items():
        here = (*path, name)
        if isinstance(command, click.Group):
            found += help_examples(command, here)
            continue
        text = "\n".join(t for t in (command.help, command.epilog) if t)
        in_example = False
        for line in _joined(text.splitlines()):
            if line.startswith("Example"):
                in_example = True
            elif in_example and line.startswith("deskpro "):
                found.append(Example(f"help: deskpro {' '.join(here)}", line))
    return found


def readme_examples(path: Path = README) -> list[Example]:
    """The `deskpro ...` lines of README.md's fenced blocks."""
    found, block, start = [], None, 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if block is None:
                block, start = [], number
            else:
                found += [
                    Example(f"README.md:{start}", c) for c in _joined(block) if c.startswith("deskpro ")
                ]
                block = None
        elif block is not None:
            block.append(line)
    return found


def all_examples(group: click.Group) -> list[Example]:
    """Every example once (the README repeats some of the --help ones)."""
    seen, out = set(), []
    for example in help_examples(group) + readme_examples():
        if example.line not in seen:
            seen.add(example.line)
            out.append(example)
    return out
