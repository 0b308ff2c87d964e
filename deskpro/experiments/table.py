"""Table 3 in the paper's layout: row, method, components, R1 / mAP per protocol, then the paper's.

The last two columns ("paper") are the paper's own Table 3 figures on Celeb-reID-light
(`deskpro.paper.paper_table3`), whatever set deskpro's columns were measured on; NOTE says so under
the table.
"""

from __future__ import annotations

from deskpro.paper import CITATION, paper_table3

PROTOCOL_NAMES = {"cc": "cross-clothes", "sc": "same-clothes", "standard": "standard"}
NOTE = (
    f"paper: the paper's own figures ({CITATION}, Table 3, Celeb-reID-light), not deskpro's; "
    "the other columns are deskpro's on the shards evaluated."
)


def _protocols(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for row in rows:
        for protocol in row["results"]:
            if protocol in PROTOCOL_NAMES and protocol not in seen:
                seen.append(protocol)
    return seen


def _cells(row: dict, protocols: list[str]) -> list[str]:
    cells = []
    for protocol in protocols:
        r = row["results"].get(protocol)
        cells += ["-", "-"] if r is None else [f"{100 * r['r1']:.1f}", f"{100 * r['mAP']:.1f}"]
    return cells


def _paper_cells(row: dict) -> list[str]:
    figures = paper_table3().get(row["key"])
    return ["-", "-"] if figures is None else [f"{figures.r1:.1f}", f"{figures.mAP:.1f}"]


def format_text(rows: list[dict], title: str | None = None) -> str:
    protocols = _protocols(rows)
    head = f"{'row':<9} {'method':<14} {'components':<48}"
    sub = " " * len(head)
    for p in protocols:
        head += f" {PROTOCOL_NAMES[p]:>15}"
        sub += f" {'R1':>7} {'mAP':>7}"
    head += f" {'paper':>15}"
    sub += f" {'R1':>7} {'mAP':>7}"
    lines = ([title] if title else []) + [head, sub, "-" * len(head)]
    for row in rows:
        cells = _cells(row, protocols) + _paper_cells(row)
        line = f"{row['key']:<9} {row['method']:<14} {row['components']:<48}"
        for i in range(0, len(cells), 2):
            line += f" {cells[i]:>7} {cells[i + 1]:>7}"
        lines.append(line)
    return "\n".join(lines + [NOTE])


def format_markdown(rows: list[dict], title: str | None = None) -> str:
    protocols = _protocols(rows)
    head = (
        ["row", "method", "components"]
        + [f"{PROTOCOL_NAMES[p]} {m}" for p in protocols for m in ("R1", "mAP")]
        + ["paper R1", "paper mAP"]
    )
    lines = ([f"### {title}", ""] if title else []) + [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                [row["key"], row["method"], row["components"]] + _cells(row, protocols) + _paper_cells(row)
            )
            + " |"
        )
    return "\n".join(lines + ["", NOTE])
