"""The genomics pipeline flow: composes tasks; does no heavy work itself.

Stages so far: identify inputs → ingest to Parquet shards → quality filtering. Later
stages hang from the shard artifacts. Lineage is recorded here, in the flow, for every artifact
whether its task ran or was a cache hit (Prefect emits no asset event for cache hits).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.futures import PrefectFuture
from pydantic import BaseModel

from helixflow.artifacts import Artifact, FileRef, Skipped
from helixflow.blocks.store import resolve_store
from helixflow.errors import HelixflowError
from helixflow.flows.embed import DEFAULT_METHODS, EmbedParams, run_embeddings
from helixflow.flows.preprocess import (
    qc_params,
    qc_totals,
    run_alignment,
    run_annotation,
    run_assembly,
    run_correction,
    run_dedup,
    run_qc,
    run_unaligned,
    stage_params,
)
from helixflow.flows.run_reports import publish_reports
from helixflow.flows.simulate import SimulateParams, md_check_rows, run_simulations
from helixflow.flows.stages import log_stage_done
from helixflow.recorder import RunRecorder
from helixflow.resources import profile
from helixflow.runner import DeferredRayTaskRunner
from helixflow.samples import Sample, plan_samples
from helixflow.samples import run_label as samples_label
from helixflow.store import asset_key
from helixflow.tasks.annotate import DEFAULT_MOTIFS, AnnotationResult, MotifParams
from helixflow.tasks.assemble import AssemblyParams
from helixflow.tasks.correct import SolidSet
from helixflow.tasks.correct_substitutions import CorrectionParams
from helixflow.tasks.ingest import IngestResult, identify_input, ingest_fastq, summarize
from helixflow.tasks.md_checks import TEMPERATURE_TOLERANCE_K
from helixflow.tasks.multiqc import publish_multiqc
from helixflow.tasks.orfs import OrfParams
from helixflow.tasks.reference import validate_reference
from helixflow.tasks.report import ReportData, SampleReport, publish_qc_report
from helixflow.tasks.variant_caller import VariantParams

DEFAULT_SHARD_SIZE = 250_000


class RunSummary(BaseModel):
    """What a pipeline run made: enough for the CLI's closing table."""

    run_id: str
    run_uri: str
    report_uri: str
    multiqc_uri: str | None = None
    """The MultiQC report over every sample (None when MultiQC had nothing to parse)."""
    bams: dict[str, str] = {}
    vcfs: dict[str, str] = {}
    assemblies: dict[str, dict[str, Any]] = {}
    """sample → {"fasta": contigs uri, and the contig stats: contigs, n50, total_length, …}"""
    embeddings: dict[str, list[str]] = {}
    analysis: dict[str, Any] = {}
    trajectories: list[str] = []
    md_checks: list[dict[str, Any]] = []
    """Per simulation: its trajectory, the sanity checks' figures and verdicts
    (`flows.simulate.md_check_rows`)."""
    samples: list[dict[str, Any]]
    skipped: list[Skipped] = []
    """Stages left out for want of input (each also one warning line), in run order."""
    warnings: list[str] = []
    """Findings the run went on from (failed MD sanity checks), one line each."""
    artifacts: int
    tasks_executed: int
    tasks_cached: int
    by_task: dict[str, dict[str, int]]


def _run_name() -> str:
    """The flow run's name: `run_label`, else `pipeline <samples>` (UI and trigger runs)."""
    params = runtime.flow_run.parameters
    return params.get("run_label") or samples_label(params.get("inputs") or [],
                                                    interleaved=bool(params.get("interleaved")))


def _lineage_of_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """The run failed or crashed: its OpenLineage FAIL event (when OpenLineage is set up)."""
    from helixflow import openlineage

    openlineage.emit([openlineage.flow_event("FAIL", str(flow_run.id), flow_run.name,
                                             str(state.message or state.name))])


@flow(name="genomics-pipeline", flow_run_name=_run_name, log_prints=True,
      task_runner=DeferredRayTaskRunner(), on_failure=[_lineage_of_failure],
      on_crashed=[_lineage_of_failure])
def genomics_pipeline(
    inputs: list[str],
    store: str | None = None,
    store_block: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    interleaved: bool = False,
    qc_options: dict[str, Any] | None = None,
    reference: str | None = None,
    assemble: bool = False,
    motifs: dict[str, str] | None = None,
    motif_files: list[str] | None = None,
    motif_p_value: float = 1e-4,
    motif_mismatches: int = 0,
    orf_options: dict[str, Any] | None = None,
    variant_options: dict[str, Any] | None = None,
    embed_methods: list[str] | None = None,
    embed_options: dict[str, Any] | None = None,
    simulate: bool = True,
    simulate_options: dict[str, Any] | None = None,
    truth: str | None = None,
    kmer_size: int = 21,
    preset: str = "sr",
    run_label: str | None = None,
) -> RunSummary:
    """Run helixflow over FASTQ inputs (local paths or s3:// URIs).

    Args:
        inputs: FASTQ files; R1/R2 pairs are grouped by name (`x_R1.fq.gz`/`x_R2.fq.gz`)
        store: store URL (default `$HELIXFLOW_STORE` or `$HELIXFLOW_HOME/store`)
        store_block: name of a saved `HelixflowStore` block (credentials, endpoint)
        shard_size: reads (or pairs) per Parquet shard
        interleaved: inputs are interleaved paired FASTQ
        qc_options: quality-filter settings (fields of `tasks.qc.QcParams`; fastp defaults)
        reference: reference FASTA (path or s3://) for alignment and annotation
        assemble: assemble each sample with MEGAHIT (contigs are then annotated too)
        motifs: IUPAC consensus motifs to find, name → motif (default: a small built-in set)
        motif_files: position weight matrices, JASPAR or MEME minimal format (path or s3://)
        motif_p_value: largest p-value of a reported PWM site
        motif_mismatches: mismatches allowed in a consensus motif site
        orf_options: ORF search settings (fields of `tasks.orfs.OrfParams`: min_length_nt,
            start_codons, table, …)
        variant_options: caller thresholds (fields of `tasks.variants.VariantParams`)
        embed_methods: embeddings to compute: kmer, protein, lshvec, dnabert (default all;
            [] for none)
        embed_options: embedding settings (fields of `flows.embed.EmbedParams`)
        simulate: phase 2: graph/spectral analysis of the embeddings, then MD of the
            representatives' peptides
        simulate_options: phase 2 settings (fields of `flows.simulate.SimulateParams`:
            method, max_representatives, md_steps, gromacs_block, cluster_block, analysis…)
        truth: a TSV naming each read's source (`name`, `genome`) to score the clusters (ARI)
        kmer_size: k for the error-correction spectrum
        preset: minimap2 preset for alignment (sr, map-ont, map-pb)
        run_label: the flow run's display name (default `pipeline <samples>`)
    """
    logger = get_run_logger()
    st = resolve_store(store, store_block)
    run_id = str(runtime.flow_run.id)
    recorder = RunRecorder(st, run_id)
    samples = plan_samples(inputs, interleaved=interleaved)
    qc = qc_params(qc_options)
    orf_params = stage_params(OrfParams, orf_options, "orf")
    variant_params = stage_params(VariantParams, variant_options, "variant")
    motif_params = _motif_params(motifs, motif_mismatches, motif_p_value)
    embed_params = _embed_params(embed_methods, embed_options)
    sim_params = _simulate_params(simulate_options)
    logger.info("run %s: %d sample(s) → %s", run_id, len(samples), st.run_uri(run_id))

    s3_options = st.storage_options if st.scheme == "s3" else None
    with profile("light"):
        uris = [u for s in samples for u in (s.r1, s.r2) if u] + ([reference] if reference else [])
        uris += (motif_files or []) + ([truth] if truth else [])
        refs = {
            uri: identify_input.submit(uri, s3_options if uri.startswith("s3://") else None)
            for uri in uris
        }
        # A bad reference fails the run now, in seconds, before any read is processed.
        checked = validate_reference.submit(refs[reference].result(), st) if reference else None
    reference_line = ""
    if checked is not None:
        info = checked.result()
        reference_line = f"; reference {info.ref.name}: {info.contigs:,} sequence(s), " \
                         f"{info.length:,} bp"
    motif_params = motif_params.model_copy(
        update={"pwm_files": [refs[u].result() for u in motif_files or []]}
    )
    log_stage_done(logger, "inputs", f"{len(refs)} file(s) found and readable{reference_line}")
    ingests: list[tuple[Sample, PrefectFuture[IngestResult]]] = []
    with profile("stream"):
        for sample in samples:
            r1: FileRef = refs[sample.r1].result()
            r2: FileRef | None = refs[sample.r2].result() if sample.r2 else None
            task = ingest_fastq.with_options(
                assets=[st.asset_uri(run_id, "ingest", sample.name)],
                asset_deps=[asset_key(ref.uri) for ref in (r1, r2) if ref],
            )
            ingests.append((sample, task.submit(sample, r1, r2, shard_size, st, run_id)))

    results: list[IngestResult] = []
    for _sample, future in ingests:
        result = future.result()
        shards = recorder.record(future, result.shards)
        results.append(result.model_copy(update={"shards": shards}))
    recorder.flush()
    log_stage_done(logger, "ingest", f"{sum(summarize(r.stats)['reads'] for r in results):,} "
                   f"reads in {sum(len(r.shards) for r in results)} shard(s)")

    filtered = run_qc(results, qc, st, run_id, recorder)
    qc_counts = {sample: qc_totals(parts) for sample, parts in filtered.items()}
    for sample, counts in qc_counts.items():
        if counts.get("reads_in") and not counts.get("reads_out"):
            reasons = {k.removesuffix("_reads"): v for k, v in counts.items()
                       if k.endswith("_reads") and v and not k.endswith("trimmed_reads")}
            logger.warning("%s: every read was filtered out by QC (%d in; removed: %s); "
                           "later stages see no reads", sample, counts["reads_in"], reasons)

    log_stage_done(logger, "qc", _kept(qc_counts, "reads_out", "reads_in", "reads kept"))
    qc_shards = {s: [q.shard for q in parts] for s, parts in filtered.items()}
    deduped, dup_counts = run_dedup(qc_shards, st, run_id, recorder)
    log_stage_done(logger, "dedup", _kept(dup_counts, "dropped", "fragments",
                                          "fragments were duplicates"))
    corrected, solids, fix_counts = run_correction(deduped, CorrectionParams(), kmer_size, st,
                                                   run_id, recorder)
    log_stage_done(logger, "correct", _kept(fix_counts, "corrected_reads", "reads",
                                            "reads corrected"))

    fastas: dict[str, FileRef] = {}
    bams: dict[str, Any] = {}
    calls: dict[str, Any] = {}
    if reference:
        fastas["reference"] = refs[reference].result()
        bams, calls = run_alignment(corrected, fastas["reference"], preset, variant_params, st,
                                    run_id, recorder, {r.sample: r.name_suffix for r in results})
        log_stage_done(logger, "align", _kept({s: b.counts for s, b in bams.items()},
                                              "mapped", "reads", "reads mapped"))
        log_stage_done(logger, "variants", ", ".join(
            f"{s} {c.counts.get('records', 0):,} ({c.counts.get('snvs', 0):,} SNVs)"
            for s, c in calls.items()) or "no sample aligned")
    else:
        unaligned = run_unaligned(corrected, st, run_id, recorder)
        log_stage_done(logger, "align", f"{sum(len(v) for v in unaligned.values())} unaligned "
                                        "BAM shard(s)")
    assemblies: dict[str, Any] = {}
    if assemble:
        assemblies = run_assembly(corrected, AssemblyParams(), st, run_id, recorder)
        for s, a in assemblies.items():
            if a.stats.get("contigs"):
                fastas[f"{s}.contigs"] = a.contigs
            else:
                recorder.skip("annotation", f"{s}.contigs", "MEGAHIT assembled no contig")
        log_stage_done(logger, "assemble", ", ".join(
            f"{s} {int(a.stats.get('contigs') or 0):,} contigs, N50 "
            f"{int(a.stats.get('n50') or 0):,} bp" for s, a in assemblies.items()) or "none")
    if not reference and not assemble:
        recorder.skip("annotation", "run", "no --reference and no --assemble: nothing to "
                                           "annotate; reads end as unaligned BAMs")
    annotations = run_annotation(fastas, orf_params, motif_params, st, run_id, recorder)
    if annotations:
        log_stage_done(logger, "annotate", f"{sum(a.orf_count for a in annotations.values()):,} "
                       f"ORFs in {len(annotations)} sequence set(s)")

    embeddings = run_embeddings(corrected, {label: a.orfs for label, a in annotations.items()},
                                embed_params, st, run_id, recorder)
    if embeddings:
        log_stage_done(logger, "embed", ", ".join(
            f"{m} {sum(a.rows or 0 for a in arts):,}×{arts[0].metadata.get('dim') if arts else 0}"
            for m, arts in embeddings.items()))

    analysis, trajectories = None, []
    if simulate and not embed_params.methods:
        recorder.skip("analysis", "run", "no embedding method selected (--embed none)")
    elif simulate:
        analysis, trajectories = run_simulations(
            embeddings, sim_params, refs[truth].result() if truth else None, st, run_id,
            recorder, store_block)
        if trajectories:
            passed = sum(1 for r in md_check_rows(trajectories) if r.get("checks_passed"))
            log_stage_done(logger, "md", f"{len(trajectories)} trajectory(ies), sanity checks "
                                         f"passed by {passed}")

    report = _report(run_id, results, qc_counts, dup_counts, solids, fix_counts, annotations,
                     bams, calls, assemblies)
    with profile("light"):
        mq_future = publish_multiqc.submit(
            report.samples, {s: (b.bam.ref(), b.bai.ref()) for s, b in bams.items()},
            {s: c.vcf.ref() for s, c in calls.items()}, st, run_id)
    multiqc = recorder.record(mq_future, mq_future.result())
    if multiqc:
        report = report.model_copy(update={"multiqc_uri": multiqc[0].uri})
    else:
        recorder.skip("multiqc", "run", "MultiQC found no figures to report")
    with profile("light"):
        future = publish_qc_report.submit(report, [a.ref() for a in corrected_flat(corrected)],
                                          st, run_id)
    (report_art,) = recorder.record(future, [future.result()])
    recorder.flush()
    log_stage_done(logger, "report", "QC report" + (" and MultiQC report" if multiqc else ""))

    skipped = recorder.skipped
    md_rows = md_check_rows(trajectories)
    md_failed = sum(1 for r in md_rows if r.get("checks_passed") is False)
    tables = {
        "run-summary": (f"Run {run_id}: each sample from reads to outputs (QC report: "
                        f"{report_art.uri}; MultiQC: {report.multiqc_uri or 'none'}); "
                        f"{len(skipped)} stage(s) skipped for want of "
                        "input (table `skipped`)" + (
                            f"; MD sanity checks: {len(md_rows) - md_failed} of "
                            f"{len(md_rows)} simulation(s) passed (table `md`)"
                            if md_rows else ""),
                        [{"sample": r.sample, "layout": r.layout, "shards": len(r.shards),
                          **summarize(r.stats),
                          "reads_after_qc": qc_counts[r.sample].get("reads_out"),
                          "bam": bams[r.sample].bam.uri if r.sample in bams else "",
                          "vcf": calls[r.sample].vcf.uri if r.sample in calls else "",
                          "skipped": ", ".join(
                              k.stage if k.sample == r.sample else f"{k.stage} ({k.sample})"
                              for k in skipped if k.sample == r.sample
                              or k.sample not in qc_counts)}
                         for r in results]),
        "skipped": ("Stages skipped for want of input, and why (the run went on)",
                    [k.model_dump() for k in skipped]),
        "qc-counts": ("Quality filtering: reads and bases in, out, trimmed and removed per reason",
                      [{"sample": sample, **counts} for sample, counts in qc_counts.items()]),
        "dedup": ("Exact duplicates removed (global per sample)",
                  [{"sample": s, **c} for s, c in dup_counts.items()]),
        "correction": ("k-mer spectrum error correction",
                       [{"sample": s, "k": solids[s].k, "solid_threshold": solids[s].threshold,
                         "skipped": solids[s].skipped or "", **c}
                        for s, c in fix_counts.items()]),
        "annotation": ("ORFs and motif sites per FASTA",
                       [{"fasta": label, "orfs": a.orf_count, **a.motif_counts}
                        for label, a in annotations.items()]),
    }
    if bams:
        tables["alignment"] = ("Alignment (mappy) per sample",
                               [{"sample": s, **b.counts} for s, b in bams.items()])
        tables["variants"] = ("Variant calls per sample",
                              [{"sample": s, **v.counts} for s, v in calls.items()])
    if embeddings:
        tables["embeddings"] = ("Embedding shards per method (N×D float32 Parquet)",
                                [{"method": m, "shards": len(arts),
                                  "vectors": sum(a.rows or 0 for a in arts),
                                  "dim": arts[0].metadata.get("dim") if arts else None}
                                 for m, arts in embeddings.items()])
    if analysis is not None:
        tables["analysis"] = ("Graph and spectral analysis of the embeddings",
                              [{"method": analysis.clusters.params.get("method"),
                                **analysis.metrics}])
    if trajectories:
        tables["md"] = ("Peptide MD trajectories (AMBER NetCDF) and their sanity checks: EM "
                        "Fmax < emtol (kJ/mol/nm), production mean T within "
                        f"{TEMPERATURE_TOLERANCE_K:g} K of ref_t, no "
                        "LINCS warnings, peptide whole and no centre-of-mass jump (Å) between "
                        "frames", md_rows)
    if assemblies:
        tables["assembly"] = ("MEGAHIT contigs per sample",
                              [{"sample": s, **a.stats} for s, a in assemblies.items()])
    publish_reports(st, run_id, results, recorder, tables)
    recorder.finish()
    logger.info("QC report: %s", report_art.uri)
    return RunSummary(
        run_id=run_id,
        report_uri=report_art.uri,
        multiqc_uri=report.multiqc_uri,
        bams={s: b.bam.uri for s, b in bams.items()},
        vcfs={s: v.vcf.uri for s, v in calls.items()},
        assemblies={s: {**a.stats, "fasta": a.contigs.uri} for s, a in assemblies.items()},
        embeddings={m: [a.uri for a in arts] for m, arts in embeddings.items()},
        analysis=analysis.metrics if analysis else {},
        trajectories=[t.uri for t in trajectories],
        md_checks=md_rows,
        run_uri=st.run_uri(run_id),
        skipped=skipped,
        warnings=recorder.warnings,
        samples=[{"sample": r.sample, "layout": r.layout, "shards": len(r.shards),
                  **summarize(r.stats), "reads_after_qc": qc_counts[r.sample].get("reads_out")}
                 for r in results],
        artifacts=len(recorder.log.records),
        tasks_executed=recorder.executed,
        tasks_cached=recorder.cached,
        by_task=recorder.by_task,
    )


def _motif_params(motifs: dict[str, str] | None, mismatches: int, p_value: float) -> MotifParams:
    try:
        return MotifParams(consensus=DEFAULT_MOTIFS if motifs is None else motifs,
                           max_mismatches=mismatches, p_value=p_value)
    except ValueError as exc:
        raise HelixflowError(f"invalid motif options: {exc}") from None


def _simulate_params(options: dict[str, Any] | None) -> SimulateParams:
    try:
        return SimulateParams(**(options or {}))
    except ValueError as exc:
        raise HelixflowError(f"invalid simulate options: {exc}",
                             hint=f"fields: {', '.join(SimulateParams.model_fields)}") from None


def _embed_params(methods: list[str] | None, options: dict[str, Any] | None) -> EmbedParams:
    values = dict(options or {})
    if methods is not None:
        values["methods"] = methods
    try:
        return EmbedParams(**values)
    except ValueError as exc:
        raise HelixflowError(f"invalid embedding options: {exc}",
                             hint=f"methods: {', '.join(DEFAULT_METHODS)}; fields: "
                                  f"{', '.join(EmbedParams.model_fields)}") from None


def _kept(counts: dict[str, dict[str, Any]], part: str, whole: str, what: str) -> str:
    """`x of y <what> (p %)` summed over samples: a stage's line on the console."""
    x = sum(int(c.get(part) or 0) for c in counts.values())
    y = sum(int(c.get(whole) or 0) for c in counts.values())
    return f"{x:,} of {y:,} {what}" + (f" ({100 * x / y:.1f} %)" if y else "")


def corrected_flat(by_sample: dict[str, list[Artifact]]) -> list[Artifact]:
    return [a for parts in by_sample.values() for a in parts]


def _report(
    run_id: str,
    results: list[IngestResult],
    qc_counts: dict[str, dict[str, int]],
    dup_counts: dict[str, dict[str, float]],
    solids: dict[str, SolidSet],
    fix_counts: dict[str, dict[str, float]],
    annotations: dict[str, AnnotationResult],
    bams: dict[str, Any],
    calls: dict[str, Any],
    assemblies: dict[str, Any],
) -> ReportData:
    """Everything the HTML report shows, gathered from the stages' results."""
    samples = []
    for r in results:
        name = r.sample
        reads_in = summarize(r.stats)["reads"]
        mates = 2 if r.layout != "single" else 1
        qc = qc_counts.get(name, {})
        dup = dup_counts.get(name, {})
        fix = fix_counts.get(name, {})
        stages = [
            {"stage": "ingest", "reads": reads_in},
            {"stage": "qc", "reads": qc.get("reads_out")},
            {"stage": "dedup", "reads": int(dup.get("kept", 0)) * mates if dup else None},
            {"stage": "correct", "reads": fix.get("reads"),
             "corrected_reads": fix.get("corrected_reads")},
        ]
        solid = solids.get(name)
        extra: dict[str, Any] = {}
        if name in bams:
            counts = bams[name].counts
            rate = counts["mapped"] / counts["reads"] if counts.get("reads") else None
            extra["Alignment"] = {**counts, "alignment_rate": rate}
        if name in calls:
            extra["Variants"] = calls[name].counts
        if name in assemblies:
            extra["Assembly"] = assemblies[name].stats
        samples.append(SampleReport(
            sample=name, layout=r.layout, read_stats=r.stats, stages=stages, qc=qc, dedup=dup,
            kmer_histogram=solid.histogram if solid else [],
            solid_threshold=solid.threshold if solid else None, correction=fix, extra=extra,
        ))
    annotation = [{"fasta": label, "orfs": a.orf_count, **a.motif_counts}
                  for label, a in annotations.items()]
    return ReportData(run_id=run_id, samples=samples, annotation=annotation)
