"""The `helixflow` command line. Exit codes: 0 ok, 1 failure, 2 usage."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from helixflow.errors import HelixflowError, InputError
from helixflow.flows.stages import STAGE_DONE

app = typer.Typer(
    name="helixflow",
    help="Orchestrated genomics: FASTQ → Parquet shards → vectors → simulations (Prefect + Ray).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
server_app = typer.Typer(help="Manage the local Prefect server (one per HELIXFLOW_HOME).",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")
blocks_app = typer.Typer(help="helixflow's Prefect blocks (store, Slurm, GROMACS, models).",
                         no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")

# soft_wrap: long lines (URLs, store paths) are never broken at the terminal's width, nor
# at 80 columns when the output is a pipe or a file, so they can be copied whole.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state: dict[str, bool] = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and worker logs.")
    ] = False,
) -> None:
    _state["debug"] = debug


def _fail(exc: BaseException) -> None:
    """Print an error as one line (plus hint) and exit 1 (128 + the signal for a run stopped
    by a signal); full traceback only with --debug."""
    from helixflow.app.stop import RunStopped

    if isinstance(exc, RunStopped):
        err.print(f"[bold yellow]cancelled:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    if _state["debug"]:
        traceback.print_exception(exc)
    if isinstance(exc, HelixflowError):
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        hint = exc.hint
        if hint is None and isinstance(exc, InputError):
            hint = "fix or replace that file and run again; nothing was published"
        if hint:
            err.print(f"[dim]hint: {hint}[/]", highlight=False, soft_wrap=True)
    else:
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False,
                  soft_wrap=True)
        if not _state["debug"]:
            err.print("[dim]hint: rerun with --debug for the traceback[/]")
    raise typer.Exit(1)


def _fail_run(launched: Any) -> None:
    """A launched run that did not complete: its UI page, then `_fail` (a stopped run's
    one line names the page already)."""
    from helixflow.app.stop import RunStopped

    if launched.ui_url and not isinstance(launched.error, RunStopped):
        err.print(f"flow run: {launched.ui_url}")
    _fail(launched.error)


@app.command()
def run(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="FASTQ files or s3:// URIs (R1/R2 paired by name); none: the demo."),
    ] = None,
    store: Annotated[str | None, typer.Option(help="Store URL: a path, file://… or s3://…",
                                              envvar="HELIXFLOW_STORE")] = None,
    store_block: Annotated[
        str | None, typer.Option(help="Saved HelixflowStore block name.")
    ] = None,
    ray_address: Annotated[str | None, typer.Option(help="Existing Ray cluster (host:port).",
                                                    envvar="HELIXFLOW_RAY_ADDRESS")] = None,
    shard_size: Annotated[
        int | None, typer.Option(min=1, help="Reads (or pairs) per shard.")
    ] = None,
    interleaved: Annotated[bool, typer.Option(help="Inputs are interleaved pairs.")] = False,
    reference: Annotated[
        str | None, typer.Option(help="Reference FASTA (path or s3://) to align and annotate.")
    ] = None,
    assemble: Annotated[bool | None, typer.Option(
        "--assemble/--no-assemble", help="Assemble each sample with MEGAHIT (contigs are "
        "annotated and their ORFs embedded). Default: on for the demo, off otherwise.")] = None,
    qc: Annotated[list[str] | None, typer.Option(
        "--qc", metavar="KEY=VALUE", help="Quality-filter setting (tasks.qc.QcParams field), "
        "e.g. --qc length_required=50 --qc cut_tail=true. Repeatable.")] = None,
    orf: Annotated[list[str] | None, typer.Option(
        "--orf", metavar="KEY=VALUE", help="ORF setting (tasks.orfs.OrfParams field), e.g. "
        "--orf table=4 --orf start_codons=ATG,GTG,TTG. Repeatable.")] = None,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", metavar="KEY=VALUE", help="Variant-caller threshold (tasks.variants."
        "VariantParams field), e.g. --variant min_depth=5. Repeatable.")] = None,
    motif: Annotated[list[str] | None, typer.Option(
        "--motif", metavar="NAME=IUPAC", help="Consensus motif to find (replaces the built-in "
        "set), e.g. --motif EcoRI=GAATTC. Repeatable.")] = None,
    motif_file: Annotated[list[str] | None, typer.Option(
        "--motif-file", help="JASPAR or MEME minimal-format PWM file (path or s3://). "
        "Repeatable.")] = None,
    motif_p_value: Annotated[float, typer.Option(
        min=0, max=1, help="Largest p-value of a reported PWM site.")] = 1e-4,
    motif_mismatches: Annotated[int, typer.Option(
        min=0, help="Mismatches allowed in a consensus motif site.")] = 0,
    embed: Annotated[list[str] | None, typer.Option(
        "--embed", help="Embedding method: kmer, protein, lshvec, dnabert, or none. Repeatable; "
        "default all.")] = None,
    embed_option: Annotated[list[str] | None, typer.Option(
        "--embed-option", metavar="KEY=VALUE", help="Embedding setting (flows.embed.EmbedParams "
        "field), e.g. --embed-option kmer_k=4. Repeatable.")] = None,
    simulate: Annotated[bool, typer.Option(
        help="Phase 2: cluster the embeddings, then MD of the representatives' peptides."
    )] = True,
    max_representatives: Annotated[int, typer.Option(
        min=0, help="Peptides simulated (medoids of the largest clusters).")] = 2,
    md_steps: Annotated[int | None, typer.Option(
        min=1, help="Production MD steps (default: a short demo run).")] = None,
    analysis_method: Annotated[str | None, typer.Option(
        help="Embedding method clustered in phase 2 (default: kmer5, else lshvec).")] = None,
    gromacs_block: Annotated[str | None, typer.Option(
        help="Saved GromacsSettings block for the MD.")] = None,
    cluster_block: Annotated[str | None, typer.Option(
        help="Saved SlurmCluster block (default: MD runs here, without Slurm).")] = None,
    ray_on_slurm: Annotated[int | None, typer.Option(
        min=1, metavar="NODES",
        help="Run on a Ray cluster started in a Slurm allocation of NODES nodes (resources "
             "from --cluster-block, else its defaults); cancelled when the run ends.")] = None,
    truth: Annotated[str | None, typer.Option(
        help="TSV of each read's source (name, genome) to score the clusters (ARI).")] = None,
) -> None:
    """Run the genomics pipeline (on the demo community when no inputs are given)."""
    if ray_on_slurm is not None and ray_address is not None:
        raise typer.BadParameter("give --ray-on-slurm or --ray-address, not both",
                                 param_hint="--ray-on-slurm")
    try:
        with contextlib.ExitStack() as allocation:
            if ray_on_slurm is not None:  # before Ray is imported: it reads its auth once
                ray_address = allocation.enter_context(_slurm_ray(ray_on_slurm, cluster_block))
            _run_pipeline(inputs, store, store_block, ray_address, shard_size, interleaved,
                          reference, assemble, {
                "qc_options": _key_values(qc, "--qc"),
                "orf_options": _key_values(orf, "--orf"),
                "variant_options": _key_values(variant, "--variant"),
                "motifs": _named_motifs(motif),
                "motif_files": motif_file or None,
                "motif_p_value": motif_p_value,
                "motif_mismatches": motif_mismatches,
                "embed_methods": None if embed is None else [m for m in embed if m != "none"],
                "embed_options": _key_values(embed_option, "--embed-option"),
                "simulate": simulate,
                "simulate_options": {k: v for k, v in {
                    "max_representatives": max_representatives, "md_steps": md_steps,
                    "method": analysis_method, "gromacs_block": gromacs_block,
                    "cluster_block": cluster_block}.items() if v is not None},
                "truth": truth,
            })
    except HelixflowError as exc:
        _fail(exc)


def _run_pipeline(inputs: list[str], store: str | None, store_block: str | None,
                  ray_address: str | None, shard_size: int | None, interleaved: bool,
                  reference: str | None, assemble: bool | None,
                  options: dict[str, Any]) -> None:
    """`helixflow run` once its options are parsed: launch, then the closing lines."""
    if not inputs:
        inputs, demo_reference, demo_truth = _demo_inputs()
        reference = reference or demo_reference
        options["truth"] = options["truth"] or demo_truth
        assemble = True if assemble is None else assemble  # every stage on the demo
    _launch_and_report(
        "running genomics-pipeline …", inputs, store=store, store_block=store_block,
        ray_address=ray_address, shard_size=shard_size, interleaved=interleaved,
        reference=reference, assemble=bool(assemble), **options)


def _launch_and_report(status: str, inputs: list[str], **launch: Any) -> None:
    """Launch the pipeline with a spinner, then its closing lines (or its one error)."""
    from helixflow.app.launch import connect_prefect, launch_pipeline, ui_base
    from helixflow.app.progress import LiveProgress
    from helixflow.flows.stages import planned_stages

    api_url = connect_prefect()
    _one_warning_per_skip()
    out.print(f"Prefect UI: [link]{ui_base(api_url)}[/link]")
    with LiveProgress(out, planned_stages(launch), label=status) as progress:
        launched = launch_pipeline(inputs, debug=_state["debug"], **launch)
    if launched.error is not None:
        _fail_run(launched)
    _print_summary(launched.summary, progress.pipeline_seconds(), progress.elapsed())
    out.print(f"Flow run in the UI: [link]{launched.ui_url}[/link]")


@contextlib.contextmanager
def _slurm_ray(nodes: int, cluster_block: str | None) -> Iterator[str]:
    """A Ray cluster in a Slurm allocation for the run (its address); a stop signal while
    it starts, or the run's end however it ends, cancels the allocation."""
    from helixflow.app.stop import STOP, Interrupted, RunStopped
    from helixflow.ray_slurm import ray_on_slurm

    with STOP.scope():
        try:
            with ray_on_slurm(_ray_slurm_spec(nodes, cluster_block)) as cluster, \
                    cluster.client_env():
                out.print(f"Ray on Slurm: job {cluster.job_id}, {cluster.address}",
                          highlight=False)
                yield cluster.address
        except Interrupted as stop:
            raise RunStopped(stop.signum, None) from None


def _parse_value(text: str) -> Any:
    """A CLI value as JSON when it parses (numbers, true/false, null, lists), else a
    string; `a,b,c` is a list of strings."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text.split(",") if "," in text else text


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any] | None:
    """`KEY=VALUE` options as a dict (None when none were given)."""
    if not items:
        return None
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
        values[key.strip()] = _parse_value(value.strip())
    return values


def _named_motifs(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    motifs: dict[str, str] = {}
    for item in items:
        name, sep, letters = item.partition("=")
        if not sep:
            name, letters = item, item
        motifs[name.strip()] = letters.strip().upper()
    return motifs


def _demo_inputs() -> tuple[list[str], str, str]:
    from helixflow.app.demo import write_demo
    from helixflow.settings import helixflow_home

    with out.status("writing the demo community …"):
        demo = write_demo(helixflow_home() / "demo")
    out.print(f"demo data: {demo.dir}")
    return [str(demo.r1), str(demo.r2)], str(demo.genomes), str(demo.truth)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class _SkipsInSummary(logging.Filter):
    """A skipped stage (or a failed MD check) is one `warning:` line of the closing
    summary; its run-log record (`RunRecorder.skip`, `RunRecorder.warn`) stays in the UI
    but is not printed on the console too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(record, "skipped_stage", False)
                    or getattr(record, "summary_warning", False)
                    or getattr(record, STAGE_DONE, False))  # the live display prints it


def _one_warning_per_skip() -> None:
    import prefect.main  # noqa: F401  (sets up Prefect's console handlers, once)
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("prefect", "prefect.flow_runs", ""):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                    isinstance(f, _SkipsInSummary) for f in handler.filters):
                handler.addFilter(_SkipsInSummary())


def _print_summary(summary: Any, pipeline: float | None, elapsed: float) -> None:
    """The closing lines; `pipeline` is the flow run's own time, `elapsed` includes
    starting Ray and the flow."""
    from helixflow.uris import display_name

    table = Table(title=f"run {summary.run_id}")
    for column in ("sample", "layout", "shards", "reads", "bases", "empty", "GC", "mean Q",
                   "after QC"):
        table.add_column(column, justify="left" if column in ("sample", "layout") else "right")
    for row in summary.samples:
        table.add_row(
            row["sample"], row["layout"], str(row["shards"]), f"{row.get('reads', 0):,}",
            f"{row.get('bases', 0):,}", str(row.get("empty_reads", "")),
            _fmt(row.get("gc"), ".3f"), _fmt(row.get("mean_quality"), ".1f"),
            f"{row['reads_after_qc']:,}" if row.get("reads_after_qc") is not None else "-",
        )
    out.print(table)
    out.print(
        f"{summary.tasks_executed} task(s) executed, {summary.tasks_cached} from cache, "
        f"{summary.artifacts} artifact(s); pipeline "
        + (f"{pipeline:.1f} s (with Ray's and the flow's start {elapsed:.1f} s)"
           if pipeline is not None else f"{elapsed:.1f} s")
    )
    out.print(f"run folder: {display_name(summary.run_uri)}")
    out.print(f"QC report: {display_name(summary.report_uri)}")
    if summary.multiqc_uri:
        out.print(f"MultiQC report: {display_name(summary.multiqc_uri)}")
    for sample, asm in summary.assemblies.items():
        out.print(f"assembly {sample}: {int(asm['contigs']):,} contigs, "
                  f"N50 {int(asm['n50']):,} bp: {asm['fasta']}")
    for method, shards in summary.embeddings.items():
        out.print(f"embeddings {method}: {len(shards)} shard(s)")
    if summary.analysis:
        m = summary.analysis
        ari = "" if m.get("ari_spectral") is None else (
            f", ARI spectral {m['ari_spectral']:.3f} / Leiden {m['ari_leiden']:.3f}")
        k = "" if m.get("k_neighbors") is None else f" ({m['k_neighbors']} neighbours each)"
        res = "" if m.get("resolution") is None else f" (Leiden resolution {m['resolution']:.3g})"
        out.print(f"analysis: {m['vectors']:,} vectors{k}, {m['n_clusters']} clusters, "
                  f"{m['communities']} communities{res}{ari}")
    checks = {row["trajectory"]: row for row in getattr(summary, "md_checks", [])}
    for trajectory in summary.trajectories:
        out.print(f"MD trajectory: {trajectory}")
        if trajectory in checks:
            out.print(f"  checks: {_md_checks_line(checks[trajectory])}", highlight=False)
    for skipped in getattr(summary, "skipped", []):
        err.print(f"[yellow]warning:[/] {escape(skipped.line)}", highlight=False,
                  soft_wrap=True)
    for line in getattr(summary, "warnings", []):
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _md_checks_line(row: dict[str, Any]) -> str:
    """One simulation's sanity figures on one line (`flows.simulate.md_check_rows`)."""
    if row.get("checks_passed") is None:
        return "none recorded"
    verdict = "all passed" if row["checks_passed"] else f"FAILED {row['failed_checks']}"
    return (f"EM Fmax {_fmt(row['em_fmax'], '.1f')} (emtol {row['emtol']:g}), mean T "
            f"{_fmt(row['mean_t'], '.1f')} K (target {row['ref_t']:g}), "
            f"{row['lincs_warnings']} LINCS warning(s), max COM jump "
            f"{row['max_com_jump_A']:.2f} Å, longest bond {row['max_bond_A']:.2f} Å: {verdict}")


@app.command()
def embed(
    inputs: Annotated[list[str], typer.Argument(help="FASTQ files or s3:// URIs.")],
    method: Annotated[list[str] | None, typer.Option(
        "--method", help="kmer, protein, lshvec, dnabert. Repeatable; default lshvec.")] = None,
    embed_option: Annotated[list[str] | None, typer.Option(
        "--embed-option", metavar="KEY=VALUE", help="EmbedParams field, e.g. lshvec_epochs=3."
    )] = None,
    reference: Annotated[str | None, typer.Option(help="Reference FASTA (enables protein).")
                         ] = None,
    store: Annotated[str | None, typer.Option(envvar="HELIXFLOW_STORE")] = None,
    store_block: Annotated[str | None, typer.Option()] = None,
    ray_address: Annotated[str | None, typer.Option(envvar="HELIXFLOW_RAY_ADDRESS")] = None,
) -> None:
    """Reads → QC → dedup → correction → embedding shards (no phase 2)."""
    try:
        _launch_and_report(
            "embedding …", inputs, store=store, store_block=store_block,
            ray_address=ray_address, reference=reference, embed_methods=method or ["lshvec"],
            embed_options=_key_values(embed_option, "--embed-option"), simulate=False)
    except HelixflowError as exc:
        _fail(exc)


@app.command("pretrain-dnabert")
def pretrain_dnabert_command(
    inputs: Annotated[list[str], typer.Argument(help="FASTQ files (reads to train on).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
    k: Annotated[int, typer.Option(min=3, max=6, help="k-mer size of the tokens.")] = 6,
    layers: Annotated[int, typer.Option(min=1)] = 2,
    hidden: Annotated[int, typer.Option(min=8)] = 128,
    steps: Annotated[int, typer.Option(min=1)] = 500,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    max_reads: Annotated[int, typer.Option(min=1)] = 200_000,
) -> None:
    """Masked-LM pretraining of a small BERT on reads, saved in DNABERT's layout."""
    try:
        from helixflow.tasks.dnabert_checkpoint import loss_curve
        from helixflow.tasks.dnabert_train import PretrainConfig, pretrain
        from helixflow.tasks.fastq import iter_read_batches
        from helixflow.tasks.sampling import SAMPLE_BATCH, first_sequences

        # lazily, file after file: no file past the bound is opened
        batches = (batch for path in inputs
                   for batch in iter_read_batches(path, batch_size=SAMPLE_BATCH))
        reads = first_sequences(batches, max_reads)
        config = PretrainConfig(k=k, layers=layers, hidden=hidden, heads=2 if hidden % 2 == 0
                                else 1, intermediate=4 * hidden, steps=steps,
                                batch_size=batch_size, max_sequences=max_reads)
        with out.status(f"pretraining on {len(reads):,} reads …", spinner="dots"):
            path = pretrain(reads, config, out_dir)
        losses = loss_curve(path)
        out.print(f"wrote {path} (loss {losses[0]:.3f} → {losses[-1]:.3f} over {steps} steps)")
    except HelixflowError as exc:
        _fail(exc)


@app.command("call-variants")
def call_variants(
    bam: Annotated[str, typer.Argument(help="Coordinate-sorted BAM (path or s3://).")],
    reference: Annotated[str, typer.Option(help="The FASTA the reads were aligned to.")],
    sample: Annotated[str | None, typer.Option(help="Sample name (default: the BAM's).")] = None,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", metavar="KEY=VALUE", help="Caller threshold (VariantParams field).")] = None,
    store: Annotated[str | None, typer.Option(envvar="HELIXFLOW_STORE")] = None,
    store_block: Annotated[str | None, typer.Option()] = None,
    ray_address: Annotated[str | None, typer.Option(envvar="HELIXFLOW_RAY_ADDRESS")] = None,
) -> None:
    """Call SNVs and small indels on an existing BAM (bgzipped, indexed VCF in the store)."""
    try:
        from helixflow.app.launch import connect_prefect, launch_flow, ui_base
        from helixflow.flows.variants import call_variants_flow

        api_url = connect_prefect()
        out.print(f"Prefect UI: [link]{ui_base(api_url)}[/link]")
        with out.status("calling variants …", spinner="dots"):
            launched = launch_flow(
                call_variants_flow,
                {"bam": bam, "reference": reference, "sample": sample,
                 "variant_options": _key_values(variant, "--variant"),
                 "run_label": f"call-variants {Path(bam).name}"},
                store=store, store_block=store_block, ray_address=ray_address,
                debug=_state["debug"],
            )
        if launched.error is not None:
            _fail_run(launched)
        summary = launched.summary
        from helixflow.uris import display_name

        out.print(f"VCF: {display_name(summary.vcf_uri)}")
        out.print(", ".join(f"{k} {v:,}" for k, v in summary.counts.items()))
        out.print(f"Flow run in the UI: [link]{launched.ui_url}[/link]")
    except HelixflowError as exc:
        _fail(exc)



def _ray_slurm_spec(nodes: int, cluster_block: str | None) -> Any:
    """The Ray-on-Slurm allocation: from the saved SlurmCluster block, else its defaults."""
    from helixflow.blocks.slurm import SlurmCluster

    try:
        cluster = SlurmCluster.load(cluster_block) if cluster_block else SlurmCluster()
        return cluster.ray_spec(nodes)
    except ValueError as exc:
        raise HelixflowError(f"--ray-on-slurm: {exc}") from None

@app.command()
def lineage(
    uri: Annotated[str, typer.Argument(help="Artifact URI (run folder or objects/) or sha256.")],
    downstream: Annotated[
        bool, typer.Option("--downstream", help="What was made from it.")
    ] = False,
    fmt: Annotated[str, typer.Option(
        "--format", help="text | json | mermaid | openlineage (RunEvents, one per line)")
    ] = "text",
    store: Annotated[str | None, typer.Option(envvar="HELIXFLOW_STORE")] = None,
    store_block: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Print where an artifact came from (or, with --downstream, what it fed)."""
    if fmt not in ("text", "json", "mermaid", "openlineage"):
        raise typer.BadParameter("must be text, json, mermaid or openlineage",
                                 param_hint="--format")
    try:
        from helixflow.blocks.store import resolve_store
        from helixflow.lineage import LineageGraph, load_records, render
        from helixflow.uris import to_uri

        st = resolve_store(store, store_block)
        graph = LineageGraph(load_records(st))
        key = uri if len(uri) == 64 and "/" not in uri else to_uri(uri)
        item = graph.resolve(key)
        if item is None:
            raise HelixflowError(
                f"no lineage for {uri} in {st.url}",
                hint="give an artifact URI printed by `helixflow run`, and the same --store",
            )
        node = graph.downstream(item) if downstream else graph.upstream(item)
        if fmt == "openlineage":
            from helixflow import openlineage

            for event in openlineage.history_events(graph, node):
                print(openlineage.to_json(event))
            return
        out.print(render(node, fmt, upstream=not downstream), highlight=False, soft_wrap=True)
    except HelixflowError as exc:
        _fail(exc)


@app.command("demo-data")
def demo_data(
    directory: Annotated[Path, typer.Argument(help="Where to write the demo community.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 7,
    pairs: Annotated[int | None, typer.Option(min=1, help="Read pairs.")] = None,
    genomes: Annotated[int | None, typer.Option(min=1, help="Genomes in the community.")] = None,
) -> None:
    """Write a synthetic mock community (genomes, paired reads, truth)."""
    from dataclasses import replace

    from helixflow.app.demo import DemoSpec, write_demo

    spec = DemoSpec(seed=seed)
    if pairs is not None:
        spec = replace(spec, n_pairs=pairs)
    if genomes is not None:
        spec = replace(spec, n_genomes=genomes)
    try:
        demo = write_demo(directory, spec)
    except ValueError as exc:
        _fail(HelixflowError(str(exc)))
    out.print(f"wrote {demo.dir}: {demo.r1.name}, {demo.r2.name}, truth in {demo.truth.name}")


DatabaseOption = Annotated[str | None, typer.Option(
    "--database", metavar="URL",
    help="The server's database: postgresql+asyncpg://USER@HOST[:PORT]/DB (password in the URL "
    "or HELIXFLOW_DATABASE_PASSWORD; never printed). Default: HELIXFLOW_DATABASE_URL, else "
    "SQLite under HELIXFLOW_HOME.")]


def _local_server(database: str | None) -> None:
    """With `--database`: start (or reuse) the local server on that database and point this
    process at it, before `connect_prefect` (which would otherwise take any server)."""
    import os

    from helixflow.app.server import ensure_server, use_server

    if database is None:
        return
    if os.environ.get("PREFECT_API_URL"):
        raise HelixflowError(
            "--database configures the local helixflow server, but PREFECT_API_URL points at "
            f"another one ({os.environ['PREFECT_API_URL']})",
            hint="unset PREFECT_API_URL, or leave --database out")
    use_server(ensure_server(database=database))


@server_app.command("start")
def server_start(database: DatabaseOption = None) -> None:
    """Start (or reuse) the local Prefect server and print its UI URL."""
    from helixflow.app.server import ensure_server

    try:
        info = ensure_server(database=database)
    except HelixflowError as exc:
        _fail(exc)
    out.print(f"Prefect server pid {info.pid}: UI {info.ui_url}  API {info.api_url}",
              soft_wrap=True)
    out.print(f"database {info.database}", highlight=False, soft_wrap=True)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local Prefect server."""
    from helixflow.app.server import stop_server

    out.print("stopped" if stop_server() else "no server was running")


@server_app.command("status")
def server_status() -> None:
    """Is the local Prefect server up? Exit 1 if not."""
    from helixflow.app.server import server_status as status

    info = status()
    if info is None:
        out.print("not running")
        raise typer.Exit(1)
    out.print(f"running: pid {info.pid}, UI {info.ui_url}, API {info.api_url}, "
              f"log {info.log_path}, database {info.database}", highlight=False, soft_wrap=True)


@blocks_app.command("register")
def blocks_register(
    config: Annotated[Path | None, typer.Option(
        help="TOML file of block documents ([store.default], [slurm.hpc], …); default: "
        "documents from the environment.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace documents that exist.")] = False,
) -> None:
    """Register helixflow's block types and create their default documents."""
    try:
        from helixflow.app.launch import connect_prefect
        from helixflow.blocks.registry import register_blocks

        connect_prefect()
        done = register_blocks(config, overwrite=overwrite)
    except HelixflowError as exc:
        _fail(exc)
    table = Table(title="blocks")
    for column in ("block", "document", "action"):
        table.add_column(column)
    for item in done:
        table.add_row(item.slug, item.name, item.action)
    out.print(table)


@app.command()
def deploy(
    name: Annotated[list[str] | None, typer.Option(
        "--name", help="Deployment to create (genomics-pipeline, embed-refresh, md-campaign). "
        "Repeatable; default all.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help="Work pool concurrency limit: flow runs at once (the rest queue).")] = 2,
    database: DatabaseOption = None,
) -> None:
    """Register blocks, create the work pool, and `prefect deploy` prefect.yaml's deployments."""
    try:
        from helixflow.app.deploy import POOL, ensure_work_pool, prefect_deploy
        from helixflow.app.launch import connect_prefect, ui_base
        from helixflow.blocks.registry import register_blocks

        _local_server(database)
        api_url = connect_prefect()
        register_blocks()
        action = ensure_work_pool(POOL, concurrency)
        out.print(f"work pool {POOL} (the one prefect.yaml names): {action} "
                  f"(concurrency limit {concurrency})")
        with out.status("prefect deploy …", spinner="dots"):
            prefect_deploy(api_url, name)
        out.print(f"deployed {', '.join(name or ['all'])}: {ui_base(api_url)}/deployments")
        out.print(f"start a worker: helixflow worker --pool {POOL}")
    except HelixflowError as exc:
        _fail(exc)


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="Work pool to poll.")] = "helixflow-process",
    limit: Annotated[int | None, typer.Option(min=1, help="Flow runs at once.")] = None,
    run_once: Annotated[bool, typer.Option(help="Run what is scheduled now, then exit.")
                        ] = False,
    database: DatabaseOption = None,
) -> None:
    """`prefect worker start` on the local server, with the store as result storage."""
    import os

    try:
        from helixflow.app.deploy import worker_command, worker_env
        from helixflow.app.launch import connect_prefect

        _local_server(database)
        env = worker_env(connect_prefect())
    except HelixflowError as exc:
        _fail(exc)
    cmd = worker_command(pool, limit=limit, run_once=run_once)
    out.print(f"worker on pool {pool} (Ctrl-C to stop)")
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, env)


@app.command()
def watch(
    queue_url: Annotated[str | None, typer.Option(
        help="SQS queue receiving the bucket's s3:ObjectCreated:* notifications.")] = None,
    bucket: Annotated[str | None, typer.Option(
        help="Poll this bucket instead (stores without notifications).")] = None,
    prefix: Annotated[str, typer.Option(help="Only keys under this prefix.")] = "",
    pattern: Annotated[list[str] | None, typer.Option(
        "--pattern", help="Glob a key must match (default *.fastq.gz, *.fq.gz, *.fastq, *.fq). "
        "Repeatable.")] = None,
    pair_timeout: Annotated[float, typer.Option(
        min=0, help="Seconds to wait for an R1's (or R2's) mate.")] = 3600.0,
    unpaired: Annotated[str, typer.Option(
        help="A mate that never came: skip (default) or single (run it single-end).")] = "skip",
    poll_interval: Annotated[float, typer.Option(min=0.1, help="Polling interval (s).")] = 60.0,
    wait_time: Annotated[int, typer.Option(min=0, max=20, help="SQS long poll (s).")] = 10,
    skip_existing: Annotated[bool, typer.Option(
        help="Polling: objects already there on the first listing are not announced.")] = False,
    name: Annotated[str, typer.Option(
        help="Watcher name: its ledger is $HELIXFLOW_HOME/watch/NAME.sqlite.")] = "default",
    once: Annotated[bool, typer.Option(
        "--once", help="Handle what is waiting, then exit.")] = False,
) -> None:
    """Announce new FASTQ uploads to Prefect (event helixflow.s3.object.created), pairing
    R1/R2, exactly once per object version; the genomics-pipeline deployment's trigger
    starts a run for each."""
    import logging

    from pydantic import ValidationError

    try:
        from helixflow.app.launch import connect_prefect
        from helixflow.app.watch import WatchConfig, open_watcher

        try:
            config = WatchConfig(
                name=name, queue_url=queue_url, bucket=bucket, prefix=prefix,
                **({"patterns": pattern} if pattern else {}), pair_timeout=pair_timeout,
                unpaired=unpaired, poll_interval=poll_interval, wait_time=wait_time,
                skip_existing=skip_existing)
        except ValidationError as exc:
            raise HelixflowError("; ".join(str(e["msg"]).removeprefix("Value error, ")
                                              for e in exc.errors())) from None
        api_url = connect_prefect()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            datefmt="%H:%M:%S")
        logging.getLogger("botocore").setLevel(logging.WARNING)
        watcher = open_watcher(config)
        source = config.queue_url or f"s3://{config.bucket}/{config.prefix}"
        out.print(f"watching {source} ({config.mode}); events to {api_url}; "
                  f"ledger {config.ledger_path}")
        try:
            stats = watcher.run(until_idle=once)
        finally:
            watcher.close()
        out.print(f"announced {stats.announced}, duplicates {stats.duplicates}, ignored "
                  f"{stats.ignored}, waiting for a mate {stats.pending}, timed out "
                  f"{stats.timeouts}, errors {stats.errors}")
    except HelixflowError as exc:
        _fail(exc)


@app.command()
def version() -> None:
    """Print helixflow's version (and git commit when run from a checkout)."""
    from helixflow.lineage import code_version

    cv = code_version()
    out.print(f"helixflow {cv['helixflow']}" + (f" ({cv['git']})" if cv["git"] else ""))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
