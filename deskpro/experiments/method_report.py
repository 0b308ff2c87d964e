"""The method experiment's figures over seeds, as tables: Markdown (printed, method.md) and a
self-contained HTML report (report.html: the same tables, pictures embedded as data URIs, so the
file opens in a browser with no server and can be moved alone).

Every figure is in percent on the test split; "a ± b" is the mean and the standard deviation over
seeds; an ordering's "mean diff ± se" is the mean paired difference and its standard error.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from deskpro.common.files import atomic_path
from deskpro.experiments.rows import ROWS
from deskpro.experiments.stats import paired, spread

# The orderings the paper draws from Table 3 (paper.md): (better, worse).
TABLE3_ORDERINGS = (
    ("2", "1"),
    ("3", "2"),
    ("3", "1"),
    ("5", "4"),
    ("6", "4"),
    ("7", "3"),
    ("7", "4"),
    ("DeSKPro", "3"),
    ("DeSKPro", "5"),
    ("DeSKPro", "7"),
    ("DeSKPro*", "3"),
    ("DeSKPro*", "6"),
    ("DeSKPro*", "DeSKPro"),
)
METRICS = ("r1", "mAP")
METRIC_NAMES = {"r1": "R1", "mAP": "mAP"}
ATTENTION_FIGURES = ("cloth", "body", "background", "contrast", "l_att")


@dataclass(frozen=True)
class Table:
    key: str  # table3, orderings, trap, attention, per-seed
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def summarise(seeds: list[dict], paper: dict | None = None) -> dict:
    """Per-seed results ([{seed, rows: {key: {protocol: {r1, mAP, ...}}}, attention}]) -> spreads,
    paired orderings, the clothes trap and the attention figures. `paper`: {row key: {r1, mAP}}
    in percent, or None."""

    keys = [row.key for row in ROWS if all(row.key in s["rows"] for s in seeds)]
    protocols = [p for p in ("cc", "sc") if all(p in s["rows"][k] for s in seeds for k in keys)]

    def values(key, protocol, metric):
        return [100 * s["rows"][key][protocol][metric] for s in seeds]

    rows = {key: {p: {m: spread(values(key, p, m)) for m in METRICS} for p in protocols} for key in keys}
    orderings = []
    for better, worse in TABLE3_ORDERINGS:
        if better not in rows or worse not in rows:
            continue
        for metric in METRICS:
            check = paired(values(better, "cc", metric), values(worse, "cc", metric))
            ours = {"better": better, "worse": worse, "protocol": "cc", "metric": metric, **check}
            if paper and better in paper and worse in paper:
                ours["paper_diff"] = paper[better][metric] - paper[worse][metric]
            orderings.append(ours)
    trap = {
        key: paired(values(key, "sc", "r1"), values(key, "cc", "r1"))
        for key in ("1", "2", "3")
        if key in rows and "sc" in protocols
    }
    attention = {}
    for key in sorted({k for s in seeds for k in s.get("attention", {})}):
        per_seed = [s["attention"][key] for s in seeds]
        attention[key] = {f: spread([100 * a[f] for a in per_seed]) for f in ATTENTION_FIGURES}
    if {"2", "3"} <= set(attention):
        attention["3 - 2 contrast"] = paired(
            [100 * s["attention"]["3"]["contrast"] for s in seeds],
            [100 * s["attention"]["2"]["contrast"] for s in seeds],
        )
    return {
        "seeds": seeds,
        "protocols": protocols,
        "rows": rows,
        "orderings": orderings,
        "trap": trap,
        "attention": attention,
        "paper": paper,
    }


def _pm(s: dict) -> str:
    return f"{s['mean']:.1f} ± {s['sd']:.1f}"


def _diff(s: dict) -> str:
    return f"{s['mean']:+.1f} ± {s['se']:.1f}"


def _per_seed(s: dict) -> str:
    return ", ".join(f"{v:+.1f}" for v in s["values"])


def tables(summary: dict) -> list[Table]:
    """The report's tables, in order: Table 3, the orderings, the clothes trap, Fig. 3, per seed."""
    n = len(summary["seeds"])
    paper = summary.get("paper") or {}
    protocols = summary["protocols"]
    names = {"cc": "cross-clothes", "sc": "same-clothes"}
    head = ["row", "method", "components"]
    head += [f"{names[p]} {METRIC_NAMES[m]}" for p in protocols for m in METRICS]
    head += ["paper R1", "paper mAP"]
    by_key = {row.key: row for row in ROWS}
    main = []
    for key, figures in summary["rows"].items():
        cells = [key, by_key[key].method, by_key[key].components]
        cells += [_pm(figures[p][m]) for p in protocols for m in METRICS]
        cells += [f"{paper[key][m]:.1f}" if key in paper else "-" for m in METRICS]
        main.append(cells)
    out = [
        Table(
            "table3",
            f"Table 3 on the synthetic world: mean ± sd over {n} seeds (percent, test split)",
            head,
            main,
            "Paper: Celeb-reID-light (every query cross-clothes), arXiv 2208.12023 Table 3."
            if paper
            else "Paper column: not available in this build.",
        )
    ]
    rule = "holds: the mean paired difference (cross-clothes) is above 0 by more than its standard error"
    out.append(
        Table(
            "orderings",
            "The paper's orderings, paired over seeds (cross-clothes)",
            ["ordering", "metric", "mean diff ± se", "per seed", "holds", "paper diff"],
            [
                [
                    f"{o['better']} > {o['worse']}",
                    METRIC_NAMES[o["metric"]],
                    _diff(o),
                    _per_seed(o),
                    "yes" if o["holds"] else "NO",
                    f"{o['paper_diff']:+.1f}" if "paper_diff" in o else "-",
                ]
                for o in summary["orderings"]
            ],
            rule,
        )
    )
    if summary["trap"]:
        out.append(
            Table(
                "trap",
                "The clothes trap: same-clothes R1 against cross-clothes R1 of the body streams",
                ["row", "same-clothes R1", "cross-clothes R1", "sc - cc (mean ± se)", "per seed"],
                [
                    [
                        key,
                        _pm(summary["rows"][key]["sc"]["r1"]),
                        _pm(summary["rows"][key]["cc"]["r1"]),
                        _diff(t),
                        _per_seed(t),
                    ]
                    for key, t in summary["trap"].items()
                ],
            )
        )
    attention = {k: v for k, v in summary["attention"].items() if k in ("2", "3")}
    if attention:
        note = ""
        if "3 - 2 contrast" in summary["attention"]:
            d = summary["attention"]["3 - 2 contrast"]
            note = f"Row 3 - row 2 contrast: {_diff(d)} (per seed {_per_seed(d)}): " + (
                "L_att moves attention off the clothes" if d["holds"] else "does not hold"
            )
        out.append(
            Table(
                "attention",
                "Fig. 3 as numbers: mean CSA attention (x100) by cell, test split",
                ["row", "cloth cells", "other body cells", "background", "body - cloth", "L_att (x100)"],
                [[key] + [_pm(a[f]) for f in ATTENTION_FIGURES] for key, a in attention.items()],
                note,
            )
        )
    seeds = [s["seed"] for s in summary["seeds"]]
    out.append(
        Table(
            "per-seed",
            "Per seed: cross-clothes R1 / mAP",
            ["row"] + [f"seed {s}" for s in seeds],
            [
                [key]
                + [
                    f"{f['cc']['r1']['values'][i]:.1f} / {f['cc']['mAP']['values'][i]:.1f}"
                    for i in range(len(seeds))
                ]
                for key, f in summary["rows"].items()
            ],
        )
    )
    return out


def format_markdown(summary: dict, keys=None) -> str:
    """The tables (those whose key is in `keys`; default: all) as Markdown."""
    parts = []
    for table in tables(summary):
        if keys is not None and table.key not in keys:
            continue
        lines = [f"### {table.title}", "", "| " + " | ".join(table.header) + " |"]
        lines.append("|" + "---|" * len(table.header))
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        if table.note:
            lines += ["", table.note]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}"
    "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}img{max-width:100%}"
)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(summary: dict, title: str = "deskpro: the method experiment") -> str:
    """The report as one HTML page: settings, tables, pictures (embedded)."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    size = summary.get("size")
    if size:
        body.append(
            "<p>"
            + e(
                f"size {size['name']}, world {size['world']}, seeds {size['seeds']}, "
                f"{size['identities']} identities, body {size['body_size']}, {size['backbone']}, "
                f"{size['epochs']} epochs, device {size['device']}; "
                f"{summary.get('seconds', 0) / 60:.1f} minutes"
            )
            + "</p>"
        )
    for table in tables(summary):
        body.append(f"<h2>{e(table.title)}</h2><table><tr>")
        body.append("".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr>")
        for row in table.rows:
            body.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        body.append("</table>")
        if table.note:
            body.append(f"<p>{e(table.note)}</p>")
    pictures = summary.get("pictures") or {}
    if pictures:
        body.append(f"<h2>Pictures (seed {summary['seeds'][0]['seed']})</h2>")
    for caption, path in pictures.items():
        body.append(
            f'<figure><img src="{_data_uri(Path(path))}" alt="{e(caption)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_html(summary: dict, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_html(summary), encoding="utf-8")
    return path
