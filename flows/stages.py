"""The pipeline's stages in run order, and which Prefect tasks make each one.

The console's live progress and the end-to-end benchmark's breakdown both group a run's
task runs by stage with this table; `tests/flows/test_stages.py` fails when a task is
added without a stage.
"""

from __future__ import annotations

import logging
from typing import Any

#: stage → the function of every Prefect task that works for it, in run order (the API
#: knows a task run's task by its `task_key`, `<function>-<hash>`).
STAGES: dict[str, tuple[str, ...]] = {
    "inputs": ("identify_input", "validate_reference"),
    "ingest": ("ingest_fastq",),
    "qc": ("detect_sample_adapters", "filter_reads"),
    "dedup": ("hash_fragments", "choose_duplicates", "remove_duplicates"),
    "correct": ("count_shard_kmers", "choose_solid_kmers", "correct_reads"),
    "align": ("align_reads", "merge_alignments", "write_unaligned_bam"),
    "variants": ("call_sample_variants",),
    "assemble": ("assemble_reads",),
    "annotate": ("annotate_sequences",),
    "embed": ("embed_kmer_spectra", "embed_protein_kmers", "fit_lsh_hash", "tokenize_shard",
              "train_lshvec", "embed_lshvec_shard", "import_dnabert_checkpoint",
              "pretrain_dnabert", "embed_dnabert_shard"),
    "analysis": ("analyze_embeddings",),
    "md": ("prepare_md", "md_trajectory"),
    "report": ("publish_multiqc", "publish_qc_report"),
}

#: The attribute of a flow log record that marks it as a stage's closing line.
STAGE_DONE = "stage_done"

_STAGE_OF = {task: stage for stage, tasks in STAGES.items() for task in tasks}


def stage_of(task_key: str) -> str:
    """The stage a task run works for, from its `task_key` (or its function's name);
    an unknown task is a stage of its own."""
    function = task_key.rsplit("-", 1)[0] if "-" in task_key else task_key
    return _STAGE_OF.get(function, function)


def planned_stages(parameters: dict[str, Any]) -> list[str]:
    """The stages a `genomics-pipeline` run with these parameters goes through, in order
    (a stage may still be skipped for want of input)."""
    embed = parameters.get("embed_methods")
    embedding = embed is None or bool(embed)
    simulate = parameters.get("simulate", True) and embedding
    wanted = {
        "variants": bool(parameters.get("reference")),
        "assemble": bool(parameters.get("assemble")),
        "annotate": bool(parameters.get("reference") or parameters.get("assemble")),
        "embed": embedding,
        "analysis": simulate,
        "md": simulate,
    }
    return [stage for stage in STAGES if wanted.get(stage, True)]


def log_stage_done(logger: logging.Logger | logging.LoggerAdapter[Any], stage: str,
                   figure: str) -> None:
    """The flow's one line for a finished stage, with its headline figure (the console's
    live progress prints it as the stage's line; the UI shows it as a log record)."""
    logger.info("%s done: %s", stage, figure, extra={STAGE_DONE: stage, "stage_figure": figure})
