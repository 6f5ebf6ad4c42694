"""MultiQC: the per-sample files its existing modules parse, and its report over a run.

Genomics users read QC across samples in MultiQC. Each run writes, per sample, the files
MultiQC's own modules already understand — fastp-format JSON for quality filtering and
duplication (from helixflow's QC and dedup counts), `samtools stats`/`flagstat`/`idxstats`
of the BAM and `bcftools stats` of the VCF (run by the real tools) — then runs MultiQC
over them: `runs/<id>/multiqc/multiqc_report.html`, with MultiQC's parsed tables beside
it (`multiqc_general_stats.txt`, `multiqc_fastp.txt`, …) and the inputs under
`multiqc-input/`, so `multiqc runs/<id>/multiqc-input` reproduces it anywhere.

The fastp JSON carries only figures helixflow measured: no Q20/Q30 rates (helixflow keeps
mean quality by position, not per-base quality classes), and no `fastp_version` (it is
not fastp's output).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import task

from helixflow.artifacts import Artifact, FileRef
from helixflow.caching import stage_options
from helixflow.errors import HelixflowError
from helixflow.store import Store
from helixflow.tables import publish_file
from helixflow.tasks.report import SampleReport
from helixflow.tools import require_tool, tool_version
from helixflow.uris import is_local, local_path

MULTIQC_VERSION = "1"
#: What each per-sample input file is named after its sample; MultiQC strips these to
#: get the sample name back (`extra_fn_clean_exts`).
SUFFIXES = {
    "fastp": ".fastp.json",
    "stats": ".samtools_stats.txt",
    "flagstat": ".flagstat.txt",
    "idxstats": ".idxstats.txt",
    "bcftools": ".bcftools_stats.txt",
}
#: MultiQC's parsed tables published next to the report (the rest of multiqc_data is
#: plot data and logs).
DATA_FILES = (
    "multiqc_general_stats.txt", "multiqc_fastp.txt", "multiqc_samtools_stats.txt",
    "multiqc_samtools_flagstat.txt", "multiqc_samtools_idxstats.txt",
    "multiqc_bcftools_stats.txt",
)  # not multiqc_data.json: it holds the scratch folder's path


def _mean_length(stats: dict[str, Any] | None) -> float:
    return float(stats.get("mean_length", 0.0)) if stats else 0.0


def fastp_json(sample: SampleReport) -> dict[str, Any]:
    """A fastp-format report of one sample's QC and dedup figures (what MultiQC's fastp
    module reads: `summary`, `filtering_result`, `duplication`, `adapter_cutting`).

    Args:
        sample: the sample's report data (QC counts, read statistics, dedup counts).

    Returns:
        The JSON-ready dict. Counts are helixflow's own: `before_filtering.total_reads`
        is QC's reads in, `after_filtering.total_reads` its reads out.

    Example:
        >>> s = SampleReport(sample="s", layout="single", read_stats={},
        ...                  qc={"reads_in": 10, "reads_out": 8, "bases_in": 1000,
        ...                      "bases_out": 760, "too_short_reads": 2})
        >>> fastp_json(s)["filtering_result"]["too_short_reads"]
        2
    """
    qc, stats = sample.qc, sample.read_stats
    paired = sample.layout != "single"
    r1 = stats.get("1") or stats.get("0")
    gc_weights = [(m.get("gc_fraction"), m.get("bases", 0)) for m in stats.values()]
    gc_bases = sum(w for g, w in gc_weights if g is not None)
    gc = (sum(g * w for g, w in gc_weights if g is not None) / gc_bases) if gc_bases else 0.0
    reads_out, bases_out = int(qc.get("reads_out", 0)), int(qc.get("bases_out", 0))
    out_length = bases_out / reads_out if reads_out else 0.0
    before: dict[str, Any] = {
        "total_reads": int(qc.get("reads_in", 0)), "total_bases": int(qc.get("bases_in", 0)),
        "read1_mean_length": _mean_length(r1), "gc_content": gc,
    }
    after: dict[str, Any] = {"total_reads": reads_out, "total_bases": bases_out,
                             "read1_mean_length": out_length}
    if paired:
        before["read2_mean_length"] = _mean_length(stats.get("2"))
        after["read2_mean_length"] = out_length
    report: dict[str, Any] = {
        "summary": {"sequencing": "paired end" if paired else "single end",
                    "before_filtering": before, "after_filtering": after},
        "filtering_result": {
            "passed_filter_reads": reads_out,
            "low_quality_reads": int(qc.get("low_quality_reads", 0)),
            "too_many_N_reads": int(qc.get("too_many_n_reads", 0)),
            "low_complexity_reads": int(qc.get("low_complexity_reads", 0)),
            "too_short_reads": int(qc.get("too_short_reads", 0)),
            "too_long_reads": int(qc.get("too_long_reads", 0)),
        },
        "adapter_cutting": {
            "adapter_trimmed_reads": int(qc.get("adapter_trimmed_reads", 0)),
            "adapter_trimmed_bases": int(qc.get("adapter_trimmed_bases", 0)),
            **{k: v for k, v in qc.items() if k.endswith("_adapter_sequence")},
        },
        "command": "helixflow qc",
    }
    if "duplication_rate" in sample.dedup:
        report["duplication"] = {"rate": float(sample.dedup["duplication_rate"])}
    return report


def _local_copy(store: Store, ref: FileRef, path: Path) -> Path:
    """`ref`'s bytes at `path` (a symlink when the store is local, so nothing is copied)."""
    if is_local(ref.uri):
        path.symlink_to(local_path(ref.uri))
    else:
        with store.open(ref.uri, "rb") as src, open(path, "wb") as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
    return path


def _tool_output(args: list[str], cwd: Path, out: Path) -> None:
    """Run a samtools/bcftools report in `cwd` (relative names: no scratch path in the
    output's command-line comment) into `out`; a failure names the tool and its stderr."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=3600)
    if proc.returncode != 0:
        raise HelixflowError(f"{' '.join(args[:2])} failed on {args[-1]} "
                             f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    out.write_text(proc.stdout)


def write_inputs(samples: list[SampleReport], bams: dict[str, tuple[FileRef, FileRef]],
                 vcfs: dict[str, FileRef], store: Store, folder: Path) -> list[Path]:
    """The per-sample files MultiQC parses, written into `folder`.

    Args:
        samples: the samples' report data (one fastp-format JSON each).
        bams: sample → (BAM, BAI) for `samtools stats`, `flagstat` and `idxstats`.
        vcfs: sample → bgzipped VCF for `bcftools stats`.
        store: where the BAMs and VCFs are read from.
        folder: an empty local folder (the BAM/VCF copies go to a sibling folder).

    Returns:
        The files written, sorted by name.
    """
    samtools, bcftools = require_tool("samtools"), require_tool("bcftools")
    work = Path(tempfile.mkdtemp(prefix="tools-", dir=folder.parent))  # not scanned by MultiQC
    written = []
    for sample in samples:
        path = folder / f"{sample.sample}{SUFFIXES['fastp']}"
        path.write_text(json.dumps(fastp_json(sample), indent=1, sort_keys=True) + "\n")
        written.append(path)
    for i, (sample, (bam, bai)) in enumerate(sorted(bams.items())):
        name = f"s{i}.bam"  # a plain relative name for the tools' command-line comment
        _local_copy(store, bam, work / name)
        _local_copy(store, bai, work / f"{name}.bai")
        for kind in ("stats", "flagstat", "idxstats"):
            out = folder / f"{sample}{SUFFIXES[kind]}"
            _tool_output([samtools, kind, name], work, out)
            written.append(out)
    for i, (sample, vcf) in enumerate(sorted(vcfs.items())):
        name = f"s{i}.vcf.gz"
        _local_copy(store, vcf, work / name)
        out = folder / f"{sample}{SUFFIXES['bcftools']}"
        _tool_output([bcftools, "stats", name], work, out)
        written.append(out)
    return sorted(written)


def run_multiqc(inputs: Path, out: Path) -> Path | None:
    """MultiQC over `inputs` into `out` (report + `multiqc_data/`); sample names are the
    input files' names less SUFFIXES. Returns the report's path, or None when MultiQC
    found nothing it could parse (it then writes no report).

    Args:
        inputs: the folder of per-sample tool outputs (named with SUFFIXES).
        out: the output folder; multiqc_config.json is written next to it.

    Returns:
        The path of multiqc_report.html, or None.

    Raises:
        HelixflowError: MultiQC exits non-zero (the message ends with its output).
    """
    config = out.parent / "multiqc_config.json"
    config.write_text(json.dumps({"use_filename_as_sample_name": True,
                                  "extra_fn_clean_exts": list(SUFFIXES.values()),
                                  "ignore_images": True}))
    args = [sys.executable, "-m", "multiqc", "--force", "--no-ai", "--quiet",
            "--config", str(config), "--outdir", str(out), str(inputs)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=1800)
    report = out / "multiqc_report.html"
    if proc.returncode != 0:
        raise HelixflowError(f"MultiQC failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return report if report.is_file() else None


def multiqc_version() -> str:
    """The installed MultiQC package's version.

    Returns:
        The version string of the multiqc distribution.
    """
    return importlib.metadata.version("multiqc")


@task(name="multiqc-report", task_run_name="multiqc",
      **stage_options(MULTIQC_VERSION, tools=("samtools", "bcftools")))
def publish_multiqc(samples: list[SampleReport], bams: dict[str, tuple[FileRef, FileRef]],
                    vcfs: dict[str, FileRef], store: Store, run_id: str) -> list[Artifact]:
    """Write MultiQC's inputs for every sample, run MultiQC, publish its report first, then
    its parsed tables (`multiqc/`) and the inputs (`multiqc-input/`).

    Cached by content (the samples' figures, the BAMs' and VCFs' identities), so a rerun
    over the same data reuses it.

    Args:
        samples: the samples' report data (`ReportData.samples`).
        bams: sample → (BAM, BAI).
        vcfs: sample → VCF.
        store: the run's store.
        run_id: the run.

    Returns:
        The published artifacts, the report first; none when MultiQC had nothing to
        report (no sample with figures).
    """
    upstream = [ref for pair in bams.values() for ref in pair] + list(vcfs.values())
    tools = {"multiqc": multiqc_version(), "samtools": tool_version("samtools"),
             "bcftools": tool_version("bcftools")}
    common: dict[str, Any] = {"run_id": run_id, "producer": "multiqc", "tools": tools,
                              "upstream": upstream}
    with store.scratch() as scratch:
        inputs = scratch / "inputs"
        inputs.mkdir()
        files = write_inputs(samples, bams, vcfs, store, inputs)
        report = run_multiqc(inputs, scratch / "multiqc")
        if report is None:
            return []
        arts = [publish_file(store, report, stage="multiqc", media_type="text/html", **common)]
        for name in DATA_FILES:
            path = scratch / "multiqc" / "multiqc_data" / name
            if path.is_file():
                media = "application/json" if name.endswith(".json") else \
                    "text/tab-separated-values"
                arts.append(publish_file(store, path, stage="multiqc", media_type=media,
                                         **common))
        arts += [publish_file(store, f, stage="multiqc-input", media_type="text/plain",
                              **common) for f in files]
    return arts
