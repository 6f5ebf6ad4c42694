"""What a pipeline run publishes about itself: the Prefect UI's tables and lineage picture,
and the run's manifest (parameters, code version, every artifact's checksum)."""

from __future__ import annotations

import base64
import json
from typing import Any

from prefect import runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from helixflow.lineage import LineageGraph, code_version, dot, mermaid, picture
from helixflow.recorder import RunRecorder
from helixflow.store import Store
from helixflow.tasks.ingest import IngestResult


def _stats_rows(result: IngestResult) -> list[dict[str, Any]]:
    """One row per mate (single-end: one row) for the statistics table."""
    rows = []
    for mate, st in result.stats.items():
        rows.append({
            "sample": result.sample, "mate": {"0": "-", "1": "R1", "2": "R2"}.get(mate, mate),
            "reads": st["reads"], "bases": st["bases"], "empty": st["empty_reads"],
            "min_len": st["min_length"], "max_len": st["max_length"],
            "mean_len": round(st["mean_length"], 2),
            "gc": None if st["gc_fraction"] is None else round(st["gc_fraction"], 4),
            "n_bases": st["n_bases"],
            "mean_q": None if st["mean_quality"] is None else round(st["mean_quality"], 2),
        })
    return rows


def _quality_profile(results: list[IngestResult]) -> list[dict[str, Any]]:
    """Mean Phred by read position, one column per sample and mate."""
    columns = {
        f"{r.sample} {'R' + m if m != '0' else ''}".strip(): st["mean_quality_by_position"]
        for r in results for m, st in r.stats.items()
    }
    longest = max((len(v) for v in columns.values()), default=0)
    return [
        {"position": i + 1, **{k: (v[i] if i < len(v) else None) for k, v in columns.items()}}
        for i in range(longest)
    ]


def publish_reports(
    store: Store,
    run_id: str,
    results: list[IngestResult],
    recorder: RunRecorder,
    tables: dict[str, tuple[str, list[dict[str, Any]]]],
) -> None:
    """Prefect UI artifacts (stats tables, lineage graph) and the run manifest."""
    for key, (description, rows) in tables.items():
        if rows:
            create_table_artifact(key=key, table=rows, description=description)
    create_table_artifact(
        key="ingest-stats",
        table=[row for r in results for row in _stats_rows(r)],
        description=f"Read statistics per input file, run {run_id}",
    )
    create_table_artifact(
        key="quality-by-position",
        table=_quality_profile(results),
        description="Mean Phred quality by read position",
    )
    graph = LineageGraph(recorder.log.records)
    roots = [graph.upstream(rec) for rec in recorder.log.records]
    png = picture(dot(roots))
    image = (f"![lineage of run {run_id}](data:image/png;base64,"
             f"{base64.b64encode(png).decode()})\n\n" if png else
             "(no picture: Graphviz's `dot` is not installed)\n\n")
    create_markdown_artifact(
        key="lineage",
        markdown=(f"## Lineage of run `{run_id}`\n\n{image}"
                  f"Mermaid source:\n\n```mermaid\n{mermaid(roots)}\n```\n"),
        description="Artifacts of this run and their inputs",
    )
    manifest = {
        "run_id": run_id,
        "flow_run_id": recorder.flow_run_id,
        "code_version": code_version(),
        "parameters": dict(runtime.flow_run.parameters),
        "artifacts": [
            {"uri": r.uri, "cas_uri": r.cas_uri, "sha256": r.sha256, "size": r.size,
             "rows": r.rows, "stage": r.stage, "cached": r.cached}
            for r in recorder.log.records
        ],
        "lineage": recorder.log.uri,
        "skipped": [k.model_dump() for k in recorder.skipped],
        "warnings": recorder.warnings,
    }
    store.write_bytes_atomic(
        store.run_uri(run_id, "manifest.json"), json.dumps(manifest, indent=2).encode()
    )
