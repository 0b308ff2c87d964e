"""The results table of an evaluation, with the paper's figures beside deskpro's where the paper has them.

The "paper" columns hold the paper's own DeSKPro line (`deskpro.paper.paper_figures`: Table 1 for
Celeb-reID and Celeb-reID-light, Table 2 for PRCC cross- and same-clothes), printed on the rows of the
combined stream ("both", the paper's DeSKPro) under the protocol the paper reports; "-" elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from deskpro.paper import CITATION, paper_figures

PAPER_STREAM = "both"  # the paper's DeSKPro figures are the two streams together


def _paper_cells(dataset: str | None, protocol: str, stream: str) -> tuple[str, str]:
    figures = paper_figures(dataset, protocol) if dataset and stream == PAPER_STREAM else None
    if figures is None:
        return "-", "-"
    return tuple("-" if v is None else f"{v:.1f}" for v in (figures.r1, figures.mAP))


def has_paper_figures(dataset: str | None, rows: Sequence) -> bool:
    return any(_paper_cells(dataset, r.protocol, r.stream) != ("-", "-") for r in rows)


def format_table(rows: Sequence, title: str | None = None, dataset: str | None = None) -> str:
    """A fixed-width table: protocol, stream, R1, R5, R10, mAP (percent), queries, gallery, excluded;
    then the paper's R1 and mAP when the dataset has paper figures (rows: `ProtocolRow`s)."""
    paper = has_paper_figures(dataset, rows)
    head = f"{'protocol':<12} {'stream':<6} {'R1':>6} {'R5':>6} {'R10':>6} {'mAP':>6} {'queries':>8} "
    head += f"{'gallery':>8} {'excl.':>6}"
    head += f" {'paper R1':>8} {'paper mAP':>9}" if paper else ""
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r.protocol:<12} {r.stream:<6} {100 * r.r1:6.1f} {100 * r.r5:6.1f} {100 * r.r10:6.1f} "
            f"{100 * r.mAP:6.1f} {r.queries:8d} {r.gallery:8d} {r.excluded:6d}"
        )
        if paper:
            r1, m_ap = _paper_cells(dataset, r.protocol, r.stream)
            line += f" {r1:>8} {m_ap:>9}"
        lines.append(line)
    if paper:
        lines.append(
            f"paper: the paper's own DeSKPro figures ({CITATION}), not deskpro's; stream {PAPER_STREAM} only"
        )
    return "\n".join(lines)
