"""Table 3 in the paper's layout: row, method, components, then R1 / mAP per protocol, in percent.

The paper reports Table 3 on Celeb-reID-light; its figures could not be retrieved for this project,
so no "paper" column is printed (never invented); NOTE says so under the table.
"""

from __future__ import annotations

PROTOCOL_NAMES = {"cc": "cross-clothes", "sc": "same-clothes", "standard": "standard"}
NOTE = "Paper figures (arXiv 2208.12023, Table 3, Celeb-reID-light) not included: not available here."


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


def format_text(rows: list[dict], title: str | None = None) -> str:
    protocols = _protocols(rows)
    head = f"{'row':<9} {'method':<14} {'components':<48}"
    sub = " " * len(head)
    for p in protocols:
        head += f" {PROTOCOL_NAMES[p]:>15}"
        sub += f" {'R1':>7} {'mAP':>7}"
    lines = ([title] if title else []) + [head, sub, "-" * len(head)]
    for row in rows:
        cells = _cells(row, protocols)
        line = f"{row['key']:<9} {row['method']:<14} {row['components']:<48}"
        for i in range(0, len(cells), 2):
            line += f" {cells[i]:>7} {cells[i + 1]:>7}"
        lines.append(line)
    return "\n".join(lines + [NOTE])


def format_markdown(rows: list[dict], title: str | None = None) -> str:
    protocols = _protocols(rows)
    head = ["row", "method", "components"] + [
        f"{PROTOCOL_NAMES[p]} {m}" for p in protocols for m in ("R1", "mAP")
    ]
    lines = ([f"### {title}", ""] if title else []) + [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join([row["key"], row["method"], row["components"]] + _cells(row, protocols)) + " |"
        )
    return "\n".join(lines + ["", NOTE])
