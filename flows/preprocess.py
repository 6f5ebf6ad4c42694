"""Phase 1 stages after ingest, composed per sample: qc → dedup → correct → align/assemble →
annotate. Functions here submit tasks and record lineage; they do no heavy work."""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.futures import PrefectFuture

from helixflow.artifacts import Artifact, FileRef
from helixflow.errors import HelixflowError
from helixflow.recorder import RunRecorder
from helixflow.resources import profile
from helixflow.store import Store, asset_key
from helixflow.tasks.align import AlignedShard, SampleBam, align_reads, merge_alignments
from helixflow.tasks.annotate import AnnotationResult, MotifParams, annotate_sequences
from helixflow.tasks.assemble import AssemblyOutput, AssemblyParams, assemble_reads
from helixflow.tasks.bam import write_unaligned_bam
from helixflow.tasks.correct import (
    CorrectionParams,
    SolidSet,
    choose_solid_kmers,
    correct_reads,
    count_shard_kmers,
)
from helixflow.tasks.dedup import choose_duplicates, hash_fragments, remove_duplicates
from helixflow.tasks.ingest import IngestResult
from helixflow.tasks.orfs import OrfParams
from helixflow.tasks.qc import QcParams, QcResult, detect_sample_adapters, filter_reads
from helixflow.tasks.variants import SampleVariants, VariantParams, call_sample_variants

T = TypeVar("T")


def stage_params(cls: type[T], options: dict[str, Any] | None, what: str) -> T:
    """Stage parameters from flow parameters (a JSON dict, as the CLI, deployments and the
    UI pass them); lists become tuples for the frozen dataclasses."""
    defaults = {f.name: f.default for f in getattr(cls, "__dataclass_fields__", {}).values()}
    values = {}
    for key, value in (options or {}).items():
        if isinstance(value, list) or (isinstance(value, str)
                                       and isinstance(defaults.get(key), tuple)):
            value = tuple(value) if isinstance(value, list) else (value,)
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        fields = ", ".join(getattr(cls, "__dataclass_fields__", None) or
                           getattr(cls, "model_fields", {}))
        raise HelixflowError(f"invalid {what} options: {exc}",
                             hint=f"{cls.__name__} fields: {fields}") from None


def qc_params(options: dict[str, Any] | None) -> QcParams:
    """QcParams from flow parameters."""
    return stage_params(QcParams, options, "qc")


def run_qc(
    ingested: list[IngestResult],
    params: QcParams,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
) -> dict[str, list[QcResult]]:
    """Filter every shard of every sample in parallel. What fastp decides from the file
    itself is decided once per sample: polyG from the first read name, the adapters by
    detection on the sample's first reads (a task per sample, before its shards)."""
    resolved: dict[str, QcParams | PrefectFuture[QcParams]] = {}
    with profile("stream"):
        for result in ingested:
            sample_params = params.resolved(result.first_read_id)
            paired = result.layout != "single"  # interleaved files hold pairs too
            if result.shards and any(sample_params.detects(m, paired) for m in (1, 2)):
                sample_params = detect_sample_adapters.submit(
                    result.sample, result.shards, sample_params, store)
            resolved[result.sample] = sample_params
    futures: list[tuple[str, PrefectFuture[QcResult]]] = []
    with profile("shard"):
        for result in ingested:
            sample_params = resolved[result.sample]
            if isinstance(sample_params, PrefectFuture):
                sample_params = sample_params.result()
            task = filter_reads.with_options(assets=[store.asset_uri(run_id, "qc", result.sample)])
            for shard in result.shards:
                futures.append((result.sample, task.submit(shard, sample_params, store, run_id)))
    out: dict[str, list[QcResult]] = {r.sample: [] for r in ingested}
    for sample, future in futures:
        qc = future.result()
        artifacts = recorder.record(future, [qc.shard] + ([qc.orphans] if qc.orphans else []))
        out[sample].append(
            qc.model_copy(update={"shard": artifacts[0],
                                  "orphans": artifacts[1] if qc.orphans else None})
        )
    recorder.flush()
    return out


def qc_totals(results: list[QcResult]) -> dict[str, int | str]:
    """Counts of a sample's shards added up, with the adapters searched (the same in every
    shard of a sample: `read1_adapter_sequence`, ...)."""
    total: dict[str, int | str] = {}
    for result in results:
        for key, value in result.counts.items():
            total[key] = int(total.get(key, 0)) + value
        total.update(result.adapters)
    return total


def run_assembly(
    shards_by_sample: dict[str, list[Artifact]],
    params: AssemblyParams,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
) -> dict[str, AssemblyOutput]:
    """MEGAHIT per sample over its (filtered) shards; a sample without reads is skipped."""
    futures = []
    with profile("stream"):
        for sample, shards in shards_by_sample.items():
            if not reads_in(shards):
                recorder.skip("assembly", sample, "no reads left after QC")
                continue
            task = assemble_reads.with_options(
                assets=[store.asset_uri(run_id, "assemble", sample)],
                asset_deps=[asset_key(s.uri) for s in shards],
            )
            futures.append((sample, task.submit(sample, shards, params, store, run_id)))
    out: dict[str, AssemblyOutput] = {}
    for sample, future in futures:
        result = future.result()
        (contigs,) = recorder.record(future, [result.contigs])
        out[sample] = result.model_copy(update={"contigs": contigs})
    recorder.flush()
    return out


def run_annotation(
    fastas: dict[str, FileRef],
    orf_params: OrfParams,
    motifs: MotifParams,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
) -> dict[str, AnnotationResult]:
    """ORFs and motif sites on each reference/contigs FASTA (one task per FASTA)."""
    futures = []
    with profile("shard"):
        for label, fasta in fastas.items():
            task = annotate_sequences.with_options(
                assets=[store.asset_uri(run_id, "annotate", label)],
                asset_deps=[asset_key(fasta.uri)],
            )
            futures.append((label, task.submit(fasta, orf_params, motifs, store, run_id)))
    out: dict[str, AnnotationResult] = {}
    for label, future in futures:
        result = future.result()
        orfs, sites = recorder.record(future, [result.orfs, result.motifs])
        out[label] = result.model_copy(update={"orfs": orfs, "motifs": sites})
    recorder.flush()
    return out


def run_dedup(
    shards_by_sample: dict[str, list[Artifact]],
    store: Store,
    run_id: str,
    recorder: RunRecorder,
) -> tuple[dict[str, list[Artifact]], dict[str, dict[str, float]]]:
    """Global exact-duplicate removal per sample: hash (map) → choose (reduce) → drop (apply).

    Keys are partitioned by hash so no task holds more than 1/P of a sample's keys.
    """
    out: dict[str, list[Artifact]] = {}
    rates: dict[str, dict[str, float]] = {}
    for sample, shards in shards_by_sample.items():
        n_parts = min(16, max(1, len(shards)))
        with profile("shard"):
            maps = [hash_fragments.submit(s, i, n_parts, store, run_id)
                    for i, s in enumerate(shards)]
        keys = [recorder.record(f, f.result()) for f in maps]
        with profile("shard"):
            reduces = [choose_duplicates.submit(sample, p, [k[p] for k in keys], store, run_id)
                       for p in range(n_parts)]
        dropped, total = [], None
        for future in reduces:
            result = future.result()
            dropped.extend(recorder.record(future, [result.dropped]))
            total = _add(total, result.counts)
        task = remove_duplicates.with_options(assets=[store.asset_uri(run_id, "dedup", sample)])
        with profile("shard"):
            applies = [task.submit(s, i, dropped, store, run_id) for i, s in enumerate(shards)]
        out[sample] = [recorder.record(f, [f.result()])[0] for f in applies]
        counts = total or {}
        if counts.get("fragments"):
            counts["duplication_rate"] = counts.get("dropped", 0) / counts["fragments"]
        rates[sample] = counts
    recorder.flush()
    return out, rates


def _add(total: dict[str, float] | None, counts: dict[str, float]) -> dict[str, float]:
    if total is None:
        return dict(counts)
    return {k: total.get(k, 0) + v for k, v in counts.items()}


def run_correction(
    shards_by_sample: dict[str, list[Artifact]],
    params: CorrectionParams,
    k: int,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
) -> tuple[dict[str, list[Artifact]], dict[str, SolidSet], dict[str, dict[str, float]]]:
    """Spectrum error correction per sample: count k-mers per shard, choose the solid set
    over the whole sample, correct every shard against it."""
    out: dict[str, list[Artifact]] = {}
    solids: dict[str, SolidSet] = {}
    totals: dict[str, dict[str, float]] = {}
    for sample, shards in shards_by_sample.items():
        with profile("shard"):
            counts = [count_shard_kmers.submit(s, k, store, run_id) for s in shards]
        count_arts = [recorder.record(f, [f.result()])[0] for f in counts]
        with profile("stream"):
            solid_future = choose_solid_kmers.submit(sample, count_arts, k, None, store, run_id)
        solid = solid_future.result()
        (kmers,) = recorder.record(solid_future, [solid.kmers])
        solid = solid.model_copy(update={"kmers": kmers})
        solids[sample] = solid
        if solid.skipped:  # reads pass through uncorrected
            recorder.skip("correction", sample, _correction_shortfall(shards, solid, sample))
        task = correct_reads.with_options(assets=[store.asset_uri(run_id, "correct", sample)])
        with profile("shard"):
            fixes = [task.submit(s, solid, params, store, run_id) for s in shards]
        total: dict[str, float] | None = None
        corrected = []
        for future in fixes:
            result = future.result()
            corrected.extend(recorder.record(future, [result.shard]))
            total = _add(total, result.counts)
        out[sample] = corrected
        totals[sample] = total or {}
    recorder.flush()
    return out, solids, totals


def reads_in(shards: list[Artifact]) -> int:
    """Reads (rows) of a sample's read shards."""
    return sum(s.rows or 0 for s in shards)


def _correction_shortfall(shards: list[Artifact], solid: SolidSet, sample: str) -> str:
    """Why a sample's reads could not be corrected, in the user's terms."""
    if not reads_in(shards):
        return "no reads left after QC"
    if not solid.histogram:
        return f"no {solid.k}-mer in its reads (all shorter than k = {solid.k})"
    return (solid.skipped or "").removeprefix(f"{sample}: ")


def run_alignment(
    shards_by_sample: dict[str, list[Artifact]],
    reference: FileRef,
    preset: str,
    variant_params: VariantParams,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
    name_suffixes: dict[str, str] | None = None,
) -> tuple[dict[str, SampleBam], dict[str, SampleVariants]]:
    """Align every shard (mappy), merge per sample into a sorted, indexed BAM, call variants."""
    parts: dict[str, list[tuple[PrefectFuture[AlignedShard], Any]]] = {}
    with profile("shard"):
        for sample, shards in shards_by_sample.items():
            parts[sample] = [
                (align_reads.submit(s, sample, reference, preset, store, run_id,
                                    (name_suffixes or {}).get(sample, "")), None)
                for s in shards
            ]
    bams: dict[str, SampleBam] = {}
    for sample, futures in parts.items():
        aligned = []
        for future, _ in futures:
            result = future.result()
            (bam,) = recorder.record(future, [result.bam])
            aligned.append(result.model_copy(update={"bam": bam}))
        task = merge_alignments.with_options(assets=[store.asset_uri(run_id, "align", sample)])
        with profile("stream"):
            merged = task.submit(sample, aligned, store, run_id)
        result = merged.result()
        bam, bai = recorder.record(merged, [result.bam, result.bai])
        bams[sample] = result.model_copy(update={"bam": bam, "bai": bai})
    calls: dict[str, SampleVariants] = {}
    with profile("stream"):
        futures_v = {
            sample: call_sample_variants.with_options(
                assets=[store.asset_uri(run_id, "variants", sample)]
            ).submit(sample, b.bam, b.bai, reference, variant_params, store, run_id)
            for sample, b in bams.items()
        }
    for sample, future in futures_v.items():
        result = future.result()
        vcf, tbi = recorder.record(future, [result.vcf, result.tbi])
        calls[sample] = result.model_copy(update={"vcf": vcf, "tbi": tbi})
    recorder.flush()
    return bams, calls


def run_unaligned(
    shards_by_sample: dict[str, list[Artifact]], store: Store, run_id: str,
    recorder: RunRecorder,
) -> dict[str, list[Artifact]]:
    """Without a reference: each final read shard as an unaligned BAM with its read group."""
    with profile("shard"):
        futures = {
            sample: [write_unaligned_bam.with_options(
                assets=[store.asset_uri(run_id, "unaligned", sample)]
            ).submit(s, sample, store, run_id) for s in shards]
            for sample, shards in shards_by_sample.items()
        }
    out = {sample: [recorder.record(f, [f.result()])[0] for f in fs]
           for sample, fs in futures.items()}
    recorder.flush()
    return out
