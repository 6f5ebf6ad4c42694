"""The run's QC report: a self-contained HTML page (plots inlined as PNG) in the run folder.

`render_report` is pure (data in, HTML out); `publish_qc_report` is the task that writes
it to the store.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from helixflow.artifacts import Artifact, FileRef
from helixflow.retries import retry_options
from helixflow.store import Store
from helixflow.tables import publish_file


class SampleReport(BaseModel):
    """Everything the report shows about one sample."""

    sample: str
    layout: str
    read_stats: dict[str, dict[str, Any]]  # per mate, from tasks.readstats.ReadStats.to_dict()
    stages: list[dict[str, Any]] = Field(default_factory=list)  # stage, reads_in, reads_out
    qc: dict[str, Any] = Field(default_factory=dict)
    dedup: dict[str, Any] = Field(default_factory=dict)
    kmer_histogram: list[int] = Field(default_factory=list)
    solid_threshold: int | None = None
    correction: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)  # alignment, variants, assembly…


class ReportData(BaseModel):
    run_id: str
    samples: list[SampleReport]
    annotation: list[dict[str, Any]] = Field(default_factory=list)
    multiqc_uri: str | None = None
    """The run's MultiQC report (tasks.multiqc), linked from this one."""


_MATE_LABEL = {"0": "reads", "1": "R1", "2": "R2"}


class Plot(str):
    """A rendered plot: base64 PNG data, shown as HTML `<img>` or markdown `![]()`."""

    title: str

    def __new__(cls, data: str, title: str) -> Plot:
        obj = super().__new__(cls, data)
        obj.title = title
        return obj

    def html(self) -> str:
        return f'<img alt="{html.escape(self.title)}" src="data:image/png;base64,{self}">'

    def markdown(self) -> str:
        return f"![{self.title}](data:image/png;base64,{self})"


def _png(fig: Any) -> Plot:
    title = fig.axes[0].get_title() if fig.axes else "plot"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return Plot(base64.b64encode(buf.getvalue()).decode(), title)


def _quality_plot(sample: SampleReport) -> Plot:
    fig, ax = plt.subplots(figsize=(6, 3))
    for mate, stats in sample.read_stats.items():
        values = stats.get("mean_quality_by_position") or []
        ax.plot(range(1, len(values) + 1), values, label=_MATE_LABEL[mate])
    ax.set_xlabel("position")
    ax.set_ylabel("mean Phred")
    ax.set_title("quality by position")
    ax.legend()
    return _png(fig)


def _length_plot(sample: SampleReport) -> Plot:
    fig, ax = plt.subplots(figsize=(6, 3))
    for mate, stats in sample.read_stats.items():
        hist = {int(k): v for k, v in (stats.get("length_histogram") or {}).items()}
        if hist:
            xs = sorted(hist)
            ax.bar(xs, [hist[x] for x in xs], alpha=0.6, label=_MATE_LABEL[mate])
    ax.set_yscale("log")
    ax.set_xlabel("read length")
    ax.set_ylabel("reads")
    ax.set_title("length distribution (ingest)")
    ax.legend()
    return _png(fig)


def _kmer_plot(sample: SampleReport) -> Plot:
    fig, ax = plt.subplots(figsize=(6, 3))
    hist = sample.kmer_histogram[1:200]
    ax.plot(range(1, len(hist) + 1), hist)
    if sample.solid_threshold:
        ax.axvline(sample.solid_threshold, color="red", linestyle="--",
                   label=f"solid ≥ {sample.solid_threshold}")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("k-mer count")
    ax.set_ylabel("distinct k-mers")
    ax.set_title("k-mer spectrum")
    return _png(fig)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    cols = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in cols) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class _Section:
    level: int
    title: str
    rows: list[dict[str, Any]] | None = None
    plots: list[Plot] = field(default_factory=list)


def _sections(data: ReportData) -> Iterator[_Section]:
    """The report's content in order; the HTML and markdown renderers only format it."""
    for sample in data.samples:
        yield _Section(2, f"{sample.sample} ({sample.layout})")
        yield _Section(3, "Reads through the stages", sample.stages,
                       [_quality_plot(sample), _length_plot(sample)])
        if sample.qc:
            yield _Section(3, "Quality filtering", [sample.qc])
        if sample.dedup:
            yield _Section(3, "Duplicates", [sample.dedup])
        if sample.kmer_histogram:
            yield _Section(3, "Error correction", [sample.correction], [_kmer_plot(sample)])
        for title, value in sample.extra.items():
            yield _Section(3, title, value if isinstance(value, list) else [value])
    if data.annotation:
        yield _Section(2, "Annotation", data.annotation)


def render_report(data: ReportData) -> str:
    """The HTML report (no external resources: plots are inlined PNGs).

    Args:
        data: the run's QC report data.

    Returns:
        A complete HTML document.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>helixflow run {html.escape(data.run_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}th{background:#eee}img{margin:4px}</style>",
        "</head><body>",
        f"<h1>helixflow QC report</h1><p>run <code>{html.escape(data.run_id)}</code></p>",
    ]
    if data.multiqc_uri:
        uri = html.escape(data.multiqc_uri)
        parts.append(f"<p>MultiQC report: <a href='{uri}'>{uri}</a></p>")
    for sec in _sections(data):
        parts.append(f"<h{sec.level}>{html.escape(sec.title)}</h{sec.level}>")
        if sec.rows is not None:
            parts.append(_table(sec.rows))
        parts.append("".join(plot.html() for plot in sec.plots))
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "none\n"
    cols = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(row.get(c)).replace("|", "\\|") for c in cols) + " |"
              for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(data: ReportData, html_uri: str | None = None) -> str:
    """The report as markdown for the Prefect UI: the same tables, plots as inline PNGs,
    and a link to the HTML report.

    Args:
        data: the run's QC report data.
        html_uri: the published HTML report to link to; None for no link.

    Returns:
        The markdown text.
    """
    parts = [f"# QC report, run `{data.run_id}`\n"]
    if html_uri:
        parts.append(f"Full report: [{html_uri}]({html_uri})\n")
    if data.multiqc_uri:
        parts.append(f"MultiQC report: [{data.multiqc_uri}]({data.multiqc_uri})\n")
    for sec in _sections(data):
        parts.append(f"{'#' * sec.level} {sec.title}\n")
        if sec.rows is not None:
            parts.append(_md_table(sec.rows))
        parts.extend(plot.markdown() + "\n" for plot in sec.plots)
    return "\n".join(parts)


@task(name="write-qc-report", task_run_name="qc-report", **retry_options())
def publish_qc_report(
    data: ReportData, upstream: list[FileRef], store: Store, run_id: str
) -> Artifact:
    """Render the report, publish it as `runs/<run>/report/report.html`, and show it in the
    Prefect UI as the markdown artifact `qc-report` (plots inline, link to the HTML).

    Args:
        data: the run's QC report data.
        upstream: the artifacts the report is made from, for lineage.
        store: the artifact store to publish to.
        run_id: the run the report belongs to.

    Returns:
        The HTML report artifact.
    """
    with store.scratch() as scratch:
        path = scratch / "report.html"
        path.write_text(render_report(data), encoding="utf-8")
        art = publish_file(store, path, run_id=run_id, stage="report", media_type="text/html",
                           producer="write-qc-report", upstream=upstream)
    create_markdown_artifact(key="qc-report", markdown=render_markdown(data, art.uri),
                             description=f"QC report of run {run_id}")
    return art
