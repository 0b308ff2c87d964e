"""The figures in the docs are the commands' own output: docs/demo.md holds `deskpro demo`'s
table.md and docs/method.md and the README hold `deskpro experiment method`'s tables, as the
formatters print them from the results the runs wrote (committed beside the docs as
docs/demo-results.json and docs/method-results.json). Where no run's results are committed, the
docs' blocks must be empty: no figure in them can be typed in by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deskpro.demo import demo_markdown
from deskpro.experiments.method_report import format_markdown

ROOT = Path(__file__).resolve().parents[1]
README_TABLES = ("table3", "trap", "attention")  # the README's share; docs/method.md has every table


def _between(text: str, name: str) -> str:
    start, end = f"<!-- {name}: start -->\n", f"<!-- {name}: end -->"
    assert start in text and end in text, f"markers of {name} missing"
    return text[text.index(start) + len(start) : text.index(end)].strip()


def _expected(results_file: str, render) -> str:
    path = ROOT / results_file
    return render(json.loads(path.read_text())).strip() if path.is_file() else ""


def test_demo_doc_is_the_demos_table() -> None:
    doc = (ROOT / "docs" / "demo.md").read_text()
    assert _between(doc, "demo table") == _expected("docs/demo-results.json", demo_markdown)


@pytest.mark.parametrize("doc, keys", [("docs/method.md", None), ("README.md", README_TABLES)])
def test_method_figures_are_the_commands_tables(doc: str, keys) -> None:
    text = (ROOT / doc).read_text()
    expected = _expected("docs/method-results.json", lambda summary: format_markdown(summary, keys))
    assert _between(text, "method tables") == expected


def test_the_check_sees_a_typed_in_table(tmp_path) -> None:
    text = "<!-- demo table: start -->\n| row | R1 |\n|---|---|\n| 1 | 50.0 |\n<!-- demo table: end -->\n"
    assert _between(text, "demo table") != _expected("docs/no-such-results.json", demo_markdown)
