"""The paper's published figures, as data: Tables 1-3 of "Identity-Sensitive Knowledge Propagation for
Cloth-Changing Person Re-identification" (ICIP 2022, arXiv 2208.12023), in percent.

Every figure here is the paper's, never deskpro's: tables print them in a column headed "paper"
beside deskpro's own. The paper reports no R-5 for PRCC and leaves some cells of its comparison
tables empty ("-"), which are None here. `paper_figures(dataset, protocol)` gives the DeSKPro line
of Table 1 / 2 for a dataset preset and evaluation protocol; `paper_table3()` the ablation rows
(Celeb-reID-light), keyed as `deskpro.experiments.rows.ROWS`.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = "arXiv 2208.12023"


@dataclass(frozen=True)
class PaperFigures:
    """One published line: rank-1, rank-5 and mAP in percent (None where the paper gives none)."""

    r1: float | None
    r5: float | None
    mAP: float | None
    source: str  # where in the paper, e.g. "Table 1, Celeb-reID-light"


# Table 1: Celeb-reID-light and Celeb-reID, (R-1, R-5, mAP) per method.
TABLE1 = {
    "HACNN": {"celeb-reid-light": (16.2, None, 11.5), "celeb-reid": (47.6, None, 9.5)},
    "MGN": {"celeb-reid-light": (21.5, None, 13.9), "celeb-reid": (49.0, None, 10.8)},
    "AFD-Net": {"celeb-reid-light": (22.2, 51.0, 11.3), "celeb-reid": (52.1, 66.1, 10.6)},
    "LightMBN": {"celeb-reid-light": (32.9, 67.0, 18.8), "celeb-reid": (57.3, 71.6, 14.3)},
    "ReIDCaps+": {"celeb-reid-light": (33.5, 63.3, 19.0), "celeb-reid": (63.0, 76.3, 15.8)},
    "RCSANet": {"celeb-reid-light": (46.6, None, 24.4), "celeb-reid": (65.3, None, 17.5)},
    "CASE-Net": {"celeb-reid-light": (35.1, 66.7, 20.4), "celeb-reid": (66.4, 78.1, 18.2)},
    "IRANet": {"celeb-reid-light": (46.2, 72.7, 25.4), "celeb-reid": (64.1, 78.7, 19.0)},
    "DeSKPro": {"celeb-reid-light": (52.0, 81.6, 29.8), "celeb-reid": (68.6, 82.3, 22.7)},
}

# Table 2: PRCC, (R-1, mAP) cross-clothes ("cc") and same-clothes ("sc") per method.
TABLE2 = {
    "HACNN": {"cc": (21.8, None), "sc": (82.5, None)},
    "PCB": {"cc": (22.9, None), "sc": (86.9, None)},
    "Yang et al.": {"cc": (34.4, None), "sc": (64.2, None)},
    "CASE-Net": {"cc": (39.5, None), "sc": (71.2, None)},
    "AFD-Net": {"cc": (42.8, None), "sc": (95.7, None)},
    "RCSANet": {"cc": (50.2, 48.6), "sc": (100.0, 97.2)},
    "LightMBN": {"cc": (50.5, 51.2), "sc": (100.0, 98.9)},
    "FSAM": {"cc": (54.5, None), "sc": (98.8, None)},
    "IRANet": {"cc": (54.9, 53.0), "sc": (99.7, 97.8)},
    "Shu et al.": {"cc": (65.8, 61.2), "sc": (99.5, 96.7)},
    "DeSKPro": {"cc": (74.0, 66.3), "sc": (99.6, 96.6)},
}

# Table 3: the ablation on Celeb-reID-light, (R-1, mAP) per row (row keys as deskpro's ablate prints them).
TABLE3 = {
    "1": (32.9, 18.8),
    "2": (33.5, 20.1),
    "3": (37.2, 20.3),
    "4": (41.6, 20.7),
    "5": (47.0, 25.6),
    "6": (47.4, 25.8),
    "7": (50.1, 27.4),
    "DeSKPro": (52.0, 29.8),
    "DeSKPro*": (53.7, 30.9),
}
TABLE3_DATASET = "celeb-reid-light"

# Sec. 3.1: the method's settings per dataset (deskpro.config's presets hold the same values).
SETTINGS = {
    "celeb-reid": {"eps": 0.1, "lam": 7.0, "tau": 5.0, "alpha": 0.7},
    "celeb-reid-light": {"eps": 0.1, "lam": 7.0, "tau": 5.0, "alpha": 0.7},
    "prcc": {"eps": 0.1, "lam": 7.0, "tau": 1.0, "alpha": 0.8},
}

DATASET_NAMES = {"celeb-reid": "Celeb-reID", "celeb-reid-light": "Celeb-reID-light", "prcc": "PRCC"}
PROTOCOL_NAMES = {"cc": "cross-clothes", "sc": "same-clothes", "standard": "standard"}


def paper_figures(dataset: str, protocol: str = "standard", method: str = "DeSKPro") -> PaperFigures | None:
    """The paper's line for `method` on a dataset preset and protocol, or None where it has none.

    Celeb-reID and Celeb-reID-light: protocol "standard" (Table 1). PRCC: "cc" or "sc" (Table 2),
    the multi-shot protocols; the single-shot variants and other datasets have no paper figure.
    """
    if dataset in ("celeb-reid", "celeb-reid-light") and protocol == "standard":
        line = TABLE1.get(method, {}).get(dataset)
        if line is None:
            return None
        return PaperFigures(*line, source=f"Table 1, {DATASET_NAMES[dataset]}")
    if dataset == "prcc" and protocol in ("cc", "sc"):
        line = TABLE2.get(method, {}).get(protocol)
        if line is None:
            return None
        return PaperFigures(line[0], None, line[1], source=f"Table 2, PRCC {PROTOCOL_NAMES[protocol]}")
    return None


def paper_table3() -> dict[str, PaperFigures]:
    """Table 3 (ablation, Celeb-reID-light): row key -> the paper's R-1 and mAP."""
    return {
        key: PaperFigures(r1, None, m_ap, source=f"Table 3 row {key}, Celeb-reID-light")
        for key, (r1, m_ap) in TABLE3.items()
    }
