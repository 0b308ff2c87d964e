"""The figures in the docs are the commands' own output: docs/demo.md holds `deskpro demo`'s
table.md and docs/method.md and the README hold `deskpro experiment method`'s tables, as the
formatters print them from the results the runs wrote (committed beside the docs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deskpro.demo import demo_markdown
from deskpro.experiments.method_report import format_markdown

ROOT = Path(__file__).resolve().parents[1]
README_TABLES = ("table3", "trap", "attention")  # the README's share; docs/method.md has every table


def _between(text: str, name: str) -> str:
    start, end = f"<!-- {name}: start -->\n", f"\n<!-- {name}: end -->"
    assert start in text and end in text, f"markers of {name} missing"
    return text[text.index(start) + len(start) : text.index(end)]


def test_demo_doc_is_the_demos_table() -> None:
    results = json.loads((ROOT / "docs" / "demo-results.json").read_text())
    doc = (ROOT / "docs" / "demo.md").read_text()
    assert _between(doc, "demo table").strip() == demo_markdown(results).strip()


@pytest.mark.parametrize("doc, keys", [("docs/method.md", None), ("README.md", README_TABLES)])
def test_method_figures_are_the_commands_tables(doc: str, keys) -> None:
    summary = json.loads((ROOT / "docs" / "method-results.json").read_text())
    text = (ROOT / doc).read_text()
    assert _between(text, "method tables").strip() == format_markdown(summary, keys).strip()
