"""Benchmark D: helixflow's variant caller against `bcftools mpileup | bcftools call -mv`.

ANCHORS benchmark D: phage lambda (shared data) with 100 SNVs and 20 one-base indels
(10 insertions, 10 deletions) planted at random positions with Python `random.seed(3)`
(at least 20 bp apart, 200 bp from the ends), ART HS25 2x150 at 30x from the mutated
genome (cached under bench/out/variants/). The reads are aligned once with helixflow
(align_batch + merge_bams; `--aligner minimap2` uses `minimap2 -ax sr | samtools sort`
instead), then both callers run on that same BAM, each in its own process:

- peer: `bcftools mpileup -f ref BAM | bcftools call -mv`, then `bcftools norm -f ref`
- helixflow: call_variants (indels already left-aligned)

Calls are compared with the planted truth (indels left-aligned, as `bcftools norm -f`
writes them) by contig, position, REF and ALT; prints TP/FP/FN and F1 for SNVs and indels
for both callers, and their wall times. The SNV bar is bcftools' own: F1 >= 0.99.

Run:
    .venv/bin/python bench/variants.py
    .venv/bin/python bench/variants.py --aligner minimap2 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "variants"
SHARED = Path(os.environ.get("HELIXFLOW_SHARED_DATA") or REPO.parent / "shared" / "data")
READ_GROUP = {"ID": "lambda", "SM": "lambda", "LB": "lib1", "PL": "ILLUMINA"}
N_SNV, N_INS, N_DEL, SPACING, MARGIN = 100, 10, 10, 20, 200
GOAL_SNV_F1 = 0.99

Variant = tuple[str, int, str, str]  # contig, 1-based POS, REF, ALT


def read_fasta(path: Path) -> tuple[str, str]:
    """Name and sequence of a one-record FASTA."""
    lines = path.read_text().split("\n")
    return lines[0][1:].split()[0], "".join(line.strip() for line in lines[1:]).upper()


def left_align(ref: str, pos: int, deleted: int, inserted: str) -> tuple[int, str]:
    """Leftmost equivalent 0-based position of an indel (see tasks.variants.left_align)."""
    if deleted:
        while pos > 0 and ref[pos - 1] == ref[pos + deleted - 1]:
            pos -= 1
        return pos, ""
    while pos > 0 and ref[pos - 1] == inserted[-1]:
        inserted, pos = inserted[-1] + inserted[:-1], pos - 1
    return pos, inserted


def plant(name: str, ref: str) -> tuple[str, set[Variant]]:
    """Mutated genome and the truth in reference coordinates (indels left-aligned)."""
    random.seed(3)
    positions: list[int] = []
    while len(positions) < N_SNV + N_INS + N_DEL:
        p = random.randrange(MARGIN, len(ref) - MARGIN)
        if all(abs(p - q) >= SPACING for q in positions):
            positions.append(p)
    kinds = ["snv"] * N_SNV + ["ins"] * N_INS + ["del"] * N_DEL
    random.shuffle(kinds)
    edits, truth = [], set()
    for p, kind in zip(positions, kinds, strict=True):
        if kind == "snv":
            alt = random.choice([b for b in "ACGT" if b != ref[p]])
            edits.append((p, 1, alt))
            truth.add((name, p + 1, ref[p], alt))
        elif kind == "ins":
            base = random.choice("ACGT")
            edits.append((p, 0, base))  # insert before p
            q, s = left_align(ref, p, 0, base)
            truth.add((name, q, ref[q - 1], ref[q - 1] + s))
        else:
            edits.append((p, 1, ""))
            q, _ = left_align(ref, p, 1, "")
            truth.add((name, q, ref[q - 1 : q + 1], ref[q - 1]))
    seq = ref
    for p, n, alt in sorted(edits, reverse=True):
        seq = seq[:p] + alt + seq[p + n :]
    return seq, truth


def prepare(aligner: str) -> tuple[Path, Path, set[Variant]]:
    """Reference link (+ .fai), the BAM, and the truth; inputs cached in bench/out."""
    OUT.mkdir(parents=True, exist_ok=True)
    source = SHARED / "genomes" / "lambda.fa"
    if not source.exists():
        sys.exit(f"{source} not found (set HELIXFLOW_SHARED_DATA)")
    ref = OUT / "lambda.fa"
    if not ref.exists():
        ref.symlink_to(source)  # bcftools wants ref.fai beside it; the source stays untouched
    subprocess.run(["samtools", "faidx", str(ref)], check=True)
    name, seq = read_fasta(source)
    mutated, truth = plant(name, seq)
    (OUT / "truth.json").write_text(json.dumps(sorted(truth)))
    prefix = OUT / "lambda_mut_"
    r1, r2 = Path(f"{prefix}1.fq"), Path(f"{prefix}2.fq")
    if not r1.exists():
        (OUT / "lambda_mut.fa").write_text(f">{name}\n{mutated}\n")
        subprocess.run(["art_illumina", "-ss", "HS25", "-p", "-l", "150", "-f", "30", "-m", "300",
                        "-s", "20", "-rs", "42", "-na", "-q", "-i", str(OUT / "lambda_mut.fa"),
                        "-o", str(prefix)], check=True, stdout=subprocess.DEVNULL)
    bam = OUT / f"lambda.{aligner}.bam"
    if not bam.exists():
        if aligner == "minimap2":
            subprocess.run(["bash", "-o", "pipefail", "-c",
                            f"minimap2 -ax sr -t 2 -R '@RG\\tID:lambda\\tSM:lambda' {ref} {r1} "
                            f"{r2} 2>/dev/null | samtools sort -o {bam} - && samtools index {bam}"],
                           check=True)
        else:
            sys.path.insert(0, str(REPO))
            from helixflow.tasks.align import align_batch, build_index
            from helixflow.tasks.bam import merge_bams
            from helixflow.tasks.fastq import iter_read_batches

            mmi = build_index(ref, "sr", OUT / "mmi")
            batch = next(iter(iter_read_batches(str(r1), str(r2), batch_size=10**7)))
            part = OUT / "lambda.part.bam"
            align_batch(batch, mmi, part, READ_GROUP)
            merge_bams([part], bam)
            part.unlink()
    return ref, bam, truth


def run_bcftools(ref: Path, bam: Path, out: Path) -> float:
    """Wall seconds of mpileup | call -mv, then norm -f ref (normalised VCF at `out`)."""
    raw = out.with_name(out.name.replace(".vcf.gz", ".raw.vcf.gz"))
    cmd = (f"bcftools mpileup -f {ref} {bam} 2>/dev/null | bcftools call -mv -Oz -o {raw} "
           f"2>/dev/null && bcftools norm -f {ref} -Oz -o {out} {raw} 2>/dev/null")
    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.perf_counter() - start


def run_helixflow(ref: Path, bam: Path, out: Path) -> float:
    """Wall seconds of call_variants in a fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", str(bam), str(ref), str(out)],
                   check=True)
    return time.perf_counter() - start


def worker(bam: str, ref: str, out: str) -> None:
    sys.path.insert(0, str(REPO))
    from helixflow.tasks.variants import VariantParams, call_variants

    call_variants(Path(bam), Path(ref), Path(out), VariantParams())


def calls(vcf: Path) -> tuple[set[Variant], set[Variant]]:
    """SNVs and indels of a VCF, one entry per ALT allele."""
    import pysam

    pysam.set_verbosity(0)  # no complaint that a VCF has no index: it is read in full
    snvs, indels = set(), set()
    with pysam.VariantFile(str(vcf)) as fh:
        for rec in fh:
            for alt in rec.alts or ():
                item = (rec.contig, rec.pos, rec.ref, alt)
                (snvs if len(rec.ref) == 1 and len(alt) == 1 else indels).add(item)
    return snvs, indels


def score(called: set[Variant], truth: set[Variant]) -> str:
    tp, fp, fn = len(called & truth), len(called - truth), len(truth - called)
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return f"TP {tp:3d} FP {fp:3d} FN {fn:3d} F1 {f1:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aligner", choices=("helixflow", "minimap2"), default="helixflow",
                        help="what makes the BAM both callers read (default %(default)s)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    for tool in ("bcftools", "samtools", "art_illumina") + (
            ("minimap2",) if args.aligner == "minimap2" else ()):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (scripts/install-system-deps.sh)")
    ref, bam, truth = prepare(args.aligner)
    peer_vcf = OUT / f"bcftools.{args.aligner}.vcf.gz"
    our_vcf = OUT / f"helixflow.{args.aligner}.vcf.gz"
    run_bcftools(ref, bam, peer_vcf)
    run_helixflow(ref, bam, our_vcf)
    peer_t = [run_bcftools(ref, bam, peer_vcf) for _ in range(args.reps)]
    ours_t = [run_helixflow(ref, bam, our_vcf) for _ in range(args.reps)]
    true_snv = {v for v in truth if len(v[2]) == 1 and len(v[3]) == 1}
    true_indel = truth - true_snv
    print(f"truth: {len(true_snv)} SNVs, {len(true_indel)} indels; BAM from {args.aligner}: {bam}")
    for label, vcf, times in (("bcftools mpileup|call -mv|norm", peer_vcf, peer_t),
                              ("helixflow call_variants", our_vcf, ours_t)):
        snv, indel = calls(vcf)
        print(f"{label:32s} SNV  {score(snv, true_snv)}")
        print(f"{'':32s} indel {score(indel, true_indel)}")
        print(f"{'':32s} wall {statistics.median(times):.2f} s (median of {len(times)}: "
              f"{', '.join(f'{t:.2f}' for t in times)})")
    _, raw_indel = calls(peer_vcf.with_name(peer_vcf.name.replace(".vcf.gz", ".raw.vcf.gz")))
    print(f"bcftools indels before norm: {score(raw_indel, true_indel)}")
    norm = OUT / "helixflow.renormalised.vcf.gz"
    subprocess.run(["bcftools", "norm", "-f", str(ref), "-Oz", "-o", str(norm), str(our_vcf)],
                   check=True, capture_output=True)
    print(f"helixflow calls unchanged by bcftools norm -f: {calls(norm) == calls(our_vcf)}")


if __name__ == "__main__":
    main()
