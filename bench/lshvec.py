"""Benchmark C of ../shared/ANCHORS.md: read-level organism classification with LSHvec.

Reads: for each genome G (length L) in ../shared/data/genomes,
`art_illumina -ss HS25 -l 150 -f F -rs 7 -na -i G` with F = 3000 * 150 / L rounded to 3
decimals (38,817 reads for the 13 genomes), cached under bench/out/lshvec/reads/.
Label = genome. Vectors are trained on all reads without labels; evaluation as in ANCHORS:
`train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)`, StandardScaler fitted
on the training part, LogisticRegression(max_iter=3000) and KNeighborsClassifier(15),
accuracy on the test part; ARI of KMeans(n_clusters=#genomes, random_state=0, n_init=4) on
the standardised vectors of all reads against the labels.

The reads are simulated genome by genome; like reads off a sequencer, the training input
is them in one seeded random order (the evaluation keeps the order above).

Rows:
- helixflow LSHvec, one process (tasks.skipgram.train_skipgram), with `--levels` (default
  14,8: each token's input vector also averages the rows of its 14- and 8-bit prefixes,
  see `tasks.skipgram.level_rows`) and, with `--plain`, also without levels (LSHVec's model);
  then the same model after `--smooth` rounds (default 8) of read-token smoothing
  (`tasks.read_vectors.smooth_model`; its time is added to the training time);
- helixflow LSHvec, 2 Ray workers on a local Ray (ray.init(num_cpus=2)), train_skipgram_ray,
  smoothing included (the pipeline's settings);
- fastText skip-gram (fasttext-modern) on the same LSH token sentences, same dim / window /
  negatives / epochs / minCount / subsampling / lr, thread=2, minn=maxn=0; read vector =
  mean of its tokens' word vectors;
- canonical 4-mer and 5-mer spectra (frequencies per read, no training);
- lshvec-upcxx figures copied from ANCHORS.md (not measured here).
helixflow's read vectors are SIF-weighted with a = `--sif-a` (default 1e-6, as the pipeline).
Hash time = fitting the hash + tokenising all reads; train time = skip-gram training
(vocabulary included; for Ray also actor start-up and synchronisation); embed time =
read vectors. The hash is saved as an artifact (bench/out/lshvec/lsh_k15_h20_s0.npz) and
reused by later runs.

Run:
    .venv/bin/python bench/lshvec.py             # 13 genomes (the headline benchmark)
    .venv/bin/python bench/lshvec.py --quick     # 6-genome subset of ANCHORS, 1 epoch
    .venv/bin/python bench/lshvec.py --art-seed 8  # new reads: settings not tuned on them
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "lshvec"
sys.path.insert(0, str(REPO))

from helixflow.tasks.lsh import LshFunction, fit_lsh, tokenize  # noqa: E402
from helixflow.tasks.read_vectors import sequence_vectors, smooth_model  # noqa: E402
from helixflow.tasks.skipgram import SkipGramConfig, train_skipgram  # noqa: E402
from helixflow.tasks.skipgram_ray import train_skipgram_ray  # noqa: E402
from helixflow.tasks.token_stream import Vocab  # noqa: E402

QUICK = ["arabidopsis_chloroplast", "hiv1", "human_mito", "orangutan_mito", "phix174",
         "ypestis_pPCP1"]
# lshvec-upcxx figures from ANCHORS.md, Benchmark C: (name, LR, kNN, time text)
ANCHOR_ROWS = {
    "full": [("lshvec-upcxx 1 epoch (ANCHORS)", 0.485, 0.813, "hash 0.05 + train 118 + tr 8.6"),
             ("lshvec-upcxx 5 epochs (ANCHORS)", 0.762, 0.847, "train 665 + transform 9.2"),
             ("4-mer spectra (ANCHORS)", 0.690, 0.903, "-"),
             ("5-mer spectra (ANCHORS)", 0.876, 0.911, "-")],
    "quick": [("lshvec-upcxx 1 epoch (ANCHORS)", 0.717, 0.977, "train 56"),
              ("lshvec-upcxx 5 epochs (ANCHORS)", 0.712, 0.998, "train 289"),
              ("4-mer spectra (ANCHORS)", 0.837, 0.962, "-"),
              ("5-mer spectra (ANCHORS)", 0.968, 0.975, "-")],
}


def shared_genomes() -> Path:
    shared = Path(os.environ.get("HELIXFLOW_SHARED_DATA") or REPO.parent / "shared" / "data")
    return shared / "genomes"


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def genome_length(fasta: Path) -> int:
    return sum(len(line.strip()) for line in fasta.read_text().splitlines()
               if not line.startswith(">"))


ANCHORS_ART_SEED = 7  # ART -rs of ANCHORS C; its reads are cached in bench/out/lshvec/reads


def simulate(names: list[str], seed: int = ANCHORS_ART_SEED) -> tuple[list[str], np.ndarray]:
    """ART single-end reads per genome (cached), ANCHORS' fold and seed (-rs 7) unless
    `seed` says otherwise; -> sequences, labels."""
    reads_dir = OUT / ("reads" if seed == ANCHORS_ART_SEED else f"reads_rs{seed}")
    reads_dir.mkdir(parents=True, exist_ok=True)
    seqs: list[str] = []
    labels: list[np.ndarray] = []
    for i, name in enumerate(names):
        fq = reads_dir / f"{name}.fq"
        if not fq.exists():
            fasta = shared_genomes() / f"{name}.fa"
            fold = round(3000 * 150 / genome_length(fasta), 3)
            art = shutil.which("art_illumina") or sys.exit("art_illumina not found")
            cmd = [art, "-ss", "HS25", "-l", "150", "-f", f"{fold}", "-rs", str(seed), "-na",
                   "-i", str(fasta), "-o", str(reads_dir / name)]
            print("simulating:", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        got = fq.read_text().splitlines()[1::4]
        seqs += got
        labels.append(np.full(len(got), i))
    return seqs, np.concatenate(labels)


def evaluate(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """ANCHORS' LR and kNN-15 accuracies, and KMeans ARI."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import adjusted_rand_score
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    sc = StandardScaler().fit(xtr)
    xtr, xte = sc.transform(xtr), sc.transform(xte)
    lr = LogisticRegression(max_iter=3000).fit(xtr, ytr).score(xte, yte)
    knn = KNeighborsClassifier(n_neighbors=15).fit(xtr, ytr).score(xte, yte)
    km = KMeans(n_clusters=len(np.unique(y)), random_state=0, n_init=4)
    ari = adjusted_rand_score(y, km.fit_predict(StandardScaler().fit_transform(x)))
    return float(lr), float(knn), float(ari)


def kmer_spectra(seqs: list[str], k: int) -> np.ndarray:
    """Canonical k-mer frequencies per read (N-containing k-mers skipped), vectorised."""
    from helixflow.tasks.lsh import _flat_codes, _valid_starts

    codes, offsets = _flat_codes(seqs)
    starts, read_of = _valid_starts(codes, offsets, k)
    base = (codes & 3).astype(np.int64)
    fw = np.zeros(len(starts), np.int64)
    rc = np.zeros(len(starts), np.int64)
    for j in range(k):
        fw = fw * 4 + base[starts + j]
        rc = rc * 4 + (3 - base[starts + k - 1 - j])  # A<->T, C<->G with A0 C1 G2 T3
    can = np.minimum(fw, rc)
    used, col = np.unique(can, return_inverse=True)
    n = len(offsets) - 1
    counts = np.bincount(read_of * len(used) + col, minlength=n * len(used))
    counts = counts.reshape(n, len(used)).astype(np.float32)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def take_reads(tok: np.ndarray, off: np.ndarray,
               idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) of reads `idx` only (vectorised segment gather)."""
    lens = np.diff(off)[idx]
    new_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    sel = np.repeat(off[idx] - new_off[:-1], lens) + np.arange(new_off[-1])
    return tok[sel], new_off


def get_lsh(seqs: list[str], k: int, hash_size: int, seed: int) -> tuple[LshFunction, bool]:
    """The saved hash artifact if present (reused across runs), else fit and save it."""
    path = OUT / f"lsh_k{k}_h{hash_size}_s{seed}.npz"
    if path.exists():
        return LshFunction.load(path), True
    lsh = fit_lsh(seqs, k=k, hash_size=hash_size, seed=seed)
    lsh.save(path)
    return lsh, False


def run_fasttext(train_tok: np.ndarray, train_off: np.ndarray, tok: np.ndarray,
                 off: np.ndarray, cfg: SkipGramConfig,
                 threads: int) -> tuple[np.ndarray, float, float]:
    """fastText skip-gram on the training order's token sentences; -> read vectors (of
    tok/off), train s, embed s."""
    import fasttext

    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        path = Path(tmp) / "sentences.txt"
        words = train_tok.astype(str)
        lines = np.split(words, train_off[1:-1])
        path.write_text("\n".join(" ".join(w) for w in lines) + "\n")
        t0 = time.perf_counter()
        model = fasttext.train_unsupervised(
            str(path), model="skipgram", dim=cfg.dim, ws=cfg.window, neg=cfg.negatives,
            epoch=cfg.epochs, minCount=cfg.min_count, thread=threads, minn=0, maxn=0,
            wordNgrams=1, t=cfg.subsample, lr=cfg.lr, bucket=0, verbose=0)
        train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    names = model.words
    keep = [i for i, w in enumerate(names) if w != "</s>"]
    buckets = np.array([int(names[i]) for i in keep], np.int64)
    mat = model.get_input_matrix()[: len(names)][keep]
    order = np.argsort(buckets)
    vocab = Vocab(buckets[order], np.ones(len(order), np.int64))
    x = sequence_vectors(tok, off, mat[order].astype(np.float32), vocab, weighting="mean")
    return x, train_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6-genome subset, 1 epoch")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--levels", default="14,8", help="coarser token levels (bits); '' = none")
    ap.add_argument("--plain", action="store_true", help="also train without levels")
    ap.add_argument("--smooth", type=int, default=8,
                    help="read-token smoothing rounds after training (0 = none)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--subsample", type=float, default=1e-5)
    ap.add_argument("--min-count", type=int, default=1)
    ap.add_argument("--weighting", default="sif", choices=["sif", "mean"])
    ap.add_argument("--sif-a", type=float, default=1e-6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--art-seed", type=int, default=ANCHORS_ART_SEED,
                    help="ART's -rs: another seed gives new reads of the same genomes (a "
                         "check of settings chosen on ANCHORS' reads)")
    ap.add_argument("--save-models", action="store_true", help="keep models in bench/out")
    ap.add_argument("--skip", default="", help="comma list of: single,ray,fasttext,kmers")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    all_names = sorted(p.stem for p in shared_genomes().glob("*.fa"))
    names = QUICK if args.quick else all_names
    seqs, y = simulate(names, args.art_seed)
    print(f"{len(names)} genomes, {len(seqs)} reads; {load()}", flush=True)
    epochs = args.epochs or (1 if args.quick else 2)
    levels = tuple(int(b) for b in args.levels.split(",") if b)
    cfg = SkipGramConfig(dim=100, window=5, negatives=5, epochs=epochs, lr=args.lr,
                         subsample=args.subsample, min_count=args.min_count, threads=1,
                         levels=levels, hash_size=20, sif_a=args.sif_a)
    rows: list[tuple[str, float, float, float, str]] = []

    t0 = time.perf_counter()
    lsh, reused = get_lsh(seqs, k=15, hash_size=20, seed=0)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok, off = tokenize(seqs, lsh)
    tok_s = time.perf_counter() - t0
    hash_txt = f"hash {fit_s:.2f}{' (loaded)' if reused else ''} + tokenize {tok_s:.1f}"
    order = np.random.default_rng(0).permutation(len(seqs))
    train_tok, train_off = take_reads(tok, off, order)  # sequencer-like order for training
    print(f"hash {lsh.digest()[:12]} {hash_txt}; {len(tok)} tokens, "
          f"{len(np.unique(tok))} buckets used; {load()}", flush=True)

    def lshvec_row(name: str, tag: str, model_fn, before_s: float = 0.0):
        before = load()
        t0 = time.perf_counter()
        model = model_fn()
        train_s = before_s + time.perf_counter() - t0
        after = load()
        t0 = time.perf_counter()
        x = sequence_vectors(tok, off, model.vectors, model.vocab, weighting=args.weighting,
                             a=model.config.sif_a, backoff=model.backoff)
        embed_s = time.perf_counter() - t0
        if args.save_models:
            model.save(OUT / f"model_{tag}.npz", lsh_digest=lsh.digest())
        lr, knn, ari = evaluate(x, y)
        times = f"{hash_txt} + train {train_s:.1f} + embed {embed_s:.2f}"
        rows.append((name, lr, knn, ari, times))
        print(f"{name}: LR {lr:.3f} kNN {knn:.3f} ARI {ari:.3f}; {times}; "
              f"stats {model.stats}; {before} -> {after}", flush=True)
        return model, train_s

    tag = f"levels {','.join(map(str, levels))}, " if levels else ""
    smooth_tag = f" + {args.smooth} smoothing rounds" if args.smooth else ""
    if "single" not in skip:
        base, base_s = lshvec_row(f"helixflow LSHvec, {tag}1 process ({epochs} ep)", "single",
                                  lambda: train_skipgram((train_tok, train_off), cfg))
        if args.smooth:
            lshvec_row(f"helixflow LSHvec, {tag}1 process ({epochs} ep){smooth_tag}",
                       "single_smooth",
                       lambda: smooth_model(base, [(train_tok, train_off)], args.smooth),
                       before_s=base_s)
    if args.plain and levels and "single" not in skip:
        lshvec_row(f"helixflow LSHvec, no levels, 1 process ({epochs} ep)", "plain",
                   lambda: train_skipgram((train_tok, train_off), replace(cfg, levels=())))
    if "ray" not in skip:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        try:
            shards = [ray.put(take_reads(train_tok, train_off,
                                         np.arange(w, len(seqs), args.workers)))
                      for w in range(args.workers)]
            lshvec_row(f"helixflow LSHvec, {tag}{args.workers} Ray workers ({epochs} ep)"
                       f"{smooth_tag}", "ray",
                       lambda: train_skipgram_ray(shards, replace(cfg, threads=1,
                                                                  smooth_rounds=args.smooth),
                                                  num_workers=args.workers))
        finally:
            ray.shutdown()
    if "fasttext" not in skip:
        before = load()
        x, train_s, embed_s = run_fasttext(train_tok, train_off, tok, off, cfg, threads=2)
        lr, knn, ari = evaluate(x, y)
        times = f"{hash_txt} + train {train_s:.1f} + embed {embed_s:.2f}"
        rows.append((f"fastText skipgram, LSH tokens ({epochs} ep)", lr, knn, ari, times))
        print(f"fastText: LR {lr:.3f} kNN {knn:.3f} ARI {ari:.3f}; {times}; {before} -> "
              f"{load()}", flush=True)
    if "kmers" not in skip:
        for k in (4, 5):
            t0 = time.perf_counter()
            x = kmer_spectra(seqs, k)
            s = time.perf_counter() - t0
            lr, knn, ari = evaluate(x, y)
            rows.append((f"canonical {k}-mer spectra", lr, knn, ari, f"spectra {s:.1f}"))
            print(f"{k}-mers: LR {lr:.3f} kNN {knn:.3f} ARI {ari:.3f}", flush=True)

    print(f"\nBenchmark C{' (quick: 6 genomes)' if args.quick else ''}: {len(seqs)} reads "
          f"(ART -rs {args.art_seed}), "
          f"k=15, hash 20 bits, dim 100, window 5, 5 negatives, {epochs} epochs, "
          f"levels {levels or 'none'}, smoothing rounds {args.smooth}, "
          f"SIF a {args.sif_a}, lr {args.lr}, subsample {args.subsample}, "
          f"min_count {args.min_count}, "
          f"{args.weighting} read vectors; {load()}")
    print(f"| {'method':44s} | LR acc | kNN-15 | ARI   | time s (2 cores) |")
    print(f"|{'-' * 46}|--------|--------|-------|------------------|")
    for name, lr, knn, ari, times in rows:
        print(f"| {name:44s} | {lr:.3f}  | {knn:.3f}  | {ari:.3f} | {times} |")
    for name, lr, knn, times in ANCHOR_ROWS["quick" if args.quick else "full"]:
        print(f"| {name:44s} | {lr:.3f}  | {knn:.3f}  |   -   | {times} |")


if __name__ == "__main__":
    main()
