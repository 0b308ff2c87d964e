"""The paper's figures (arXiv 2208.12023) beside deskpro's: the data module and the evaluate table."""

from __future__ import annotations

from deskpro.config import PRESETS
from deskpro.experiments.rows import ROW_KEYS
from deskpro.paper import SETTINGS, paper_figures, paper_table3
from deskpro.train.evaluate import ProtocolRow, format_report


def test_paper_figures_are_the_deskpro_lines_of_tables_1_and_2():
    light = paper_figures("celeb-reid-light")
    assert (light.r1, light.r5, light.mAP) == (52.0, 81.6, 29.8) and "Table 1" in light.source
    celeb = paper_figures("celeb-reid", "standard")
    assert (celeb.r1, celeb.r5, celeb.mAP) == (68.6, 82.3, 22.7)
    cc, sc = paper_figures("prcc", "cc"), paper_figures("prcc", "sc")
    assert (cc.r1, cc.r5, cc.mAP, sc.r1, sc.mAP) == (74.0, None, 66.3, 99.6, 96.6)
    assert paper_figures("prcc", "cc", method="IRANet").mAP == 53.0
    assert paper_figures("prcc", "cc-single") is None and paper_figures("synthetic", "cc") is None
    assert paper_figures("market1501") is None and paper_figures("celeb-reid", method="nobody") is None


def test_table3_has_every_ablation_row_and_the_settings_match_the_presets():
    table3 = paper_table3()
    assert list(table3) == list(ROW_KEYS)
    assert (table3["1"].r1, table3["1"].mAP, table3["DeSKPro*"].r1) == (32.9, 18.8, 53.7)
    assert table3["DeSKPro"].r1 == paper_figures("celeb-reid-light").r1  # Tables 1 and 3 agree
    for dataset, values in SETTINGS.items():
        method = PRESETS[dataset].method
        assert (method.eps, method.lam, method.tau, method.alpha) == tuple(values.values())


def _row(protocol, stream, r1=0.5, m_ap=0.25):
    return ProtocolRow(protocol, stream, "cc", r1, 0.6, 0.7, m_ap, 10, 20, 0).to_dict()


def test_evaluate_prints_the_paper_column_on_the_combined_stream():
    rows = [_row("cc", "both"), _row("cc", "body"), _row("cc-single", "both"), _row("sc", "both")]
    report = {"dataset": "prcc", "split": "test", "checkpoint": "c.pt", "results": rows}
    lines = format_report(report).splitlines()
    assert lines[1].split()[-4:] == ["paper", "R1", "paper", "mAP"]
    assert lines[3].split()[-2:] == ["74.0", "66.3"] and lines[3].split()[2] == "50.0"
    assert lines[4].split()[-2:] == ["-", "-"] and lines[5].split()[-2:] == ["-", "-"]
    assert lines[6].split()[-2:] == ["99.6", "96.6"]
    assert "paper's own" in lines[lines.index("protocols:") - 1]
    light = {**report, "dataset": "celeb-reid-light", "results": [_row("standard", "both")]}
    assert format_report(light).splitlines()[3].split()[-2:] == ["52.0", "29.8"]
    synthetic = {**report, "dataset": "synthetic"}  # no paper figures: no paper column at all
    assert "paper" not in format_report(synthetic)
