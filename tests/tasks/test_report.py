"""QC report rendering: the HTML page and the markdown shown in the Prefect UI."""

from __future__ import annotations

import base64
import re

from helixflow.tasks.report import ReportData, SampleReport, render_markdown, render_report


def _data() -> ReportData:
    stats = {"1": {"mean_quality_by_position": [30.0, 31.5, 29.0],
                   "length_histogram": {"150": 90, "149": 10}},
             "2": {"mean_quality_by_position": [28.0, 27.5, 26.0],
                   "length_histogram": {"150": 100}}}
    sample = SampleReport(
        sample="S1", layout="paired", read_stats=stats,
        stages=[{"stage": "ingest", "reads": 200}, {"stage": "qc", "reads": 180}],
        qc={"reads_in": 200, "reads_out": 180, "too_short_reads": 20},
        dedup={"fragments": 90, "dropped": 3, "duplication_rate": 3 / 90},
        kmer_histogram=[0, 500, 40, 10, 30, 80, 90, 60], solid_threshold=3,
        correction={"reads": 174, "corrected_reads": 12},
        extra={"Alignment": {"reads": 174, "mapped": 170, "alignment_rate": 170 / 174}},
    )
    return ReportData(run_id="run-1", samples=[sample],
                      annotation=[{"fasta": "reference", "orfs": 42, "EcoRI": 1}])


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)",
                                                     text)]


def test_markdown_has_tables_plots_and_link() -> None:
    md = render_markdown(_data(), "file:///store/runs/run-1/report/report.html")
    assert "[file:///store/runs/run-1/report/report.html]" in md
    for heading in ("## S1 (paired)", "### Quality filtering", "### Duplicates",
                    "### Error correction", "### Alignment", "## Annotation"):
        assert heading in md
    assert "| reads_in | reads_out | too_short_reads |" in md and "| 200 | 180 | 20 |" in md
    images = _pngs(md)
    assert len(images) == 3 and all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert "![quality by position](data:image/png" in md


def test_html_is_self_contained() -> None:
    page = render_report(_data())
    assert page.startswith("<!doctype html>") and "</html>" in page
    assert len(_pngs(page)) == 3
    assert "http://" not in page and "https://" not in page
    assert "<td>42</td>" in page
