"""Motif matrices: count matrices (`CountMatrix`) and position weight matrices (`PWM`).

A PWM (`pwm_from_counts`) holds log-odds scores in bits, log2(p / background), with
probabilities (counts + pseudocount * background) / (sites + pseudocount), so a column
with a zero count still scores finitely. P-values (`PWM.p_value`) come from the exact
distribution of the window score under the background (independent bases), computed by
dynamic programming over the matrix columns on scores rounded to `resolution` bits, as
FIMO and TFM-Pvalue do. They are exact for the rounded matrix. Pure functions, no
Prefect; files are read by `tasks.motif_parsers`, matrices scanned by `tasks.motifs`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

_UNIFORM = np.full(4, 0.25)

@dataclass(frozen=True)
class CountMatrix:
    """A motif as counts (width x 4, columns A C G T), as read from a motif file."""

    name: str
    counts: np.ndarray
    alt_name: str = ""
    background: np.ndarray | None = None  # from the file (MEME), else None

    @property
    def width(self) -> int:
        """Number of positions."""
        return int(self.counts.shape[0])


@dataclass(frozen=True)
class PWM:
    """Log-odds position weight matrix (bits, width x 4, columns A C G T) and background.

    Args:
        name: reported in hits.
        scores: log-odds score of each base at each position.
        background: base probabilities the p-values assume (A C G T, sums to 1).
        resolution: score granularity (bits) of the exact p-value computation.
    """

    name: str
    scores: np.ndarray
    background: np.ndarray = field(default_factory=lambda: _UNIFORM.copy())
    resolution: float = 0.001

    def __post_init__(self) -> None:
        """Check shapes and values so a bad matrix fails here, not mid-scan."""
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != 4 or scores.shape[0] == 0:
            raise ValueError(f"PWM {self.name!r}: scores must be width x 4, got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError(f"PWM {self.name!r}: scores must be finite (use a pseudocount)")
        bg = np.asarray(self.background, dtype=np.float64)
        if bg.shape != (4,) or (bg <= 0).any() or not math.isclose(bg.sum(), 1.0, rel_tol=1e-6):
            raise ValueError(f"background must be 4 positive probabilities summing to 1, got {bg}")
        if not self.resolution > 0:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "background", bg / bg.sum())

    @property
    def width(self) -> int:
        """Number of positions."""
        return int(self.scores.shape[0])

    def reverse_complement(self) -> PWM:
        """The matrix of the other strand: positions reversed, A<->T and C<->G swapped."""
        return PWM(self.name, self.scores[::-1, ::-1].copy(), self.background[::-1].copy(),
                   self.resolution)

    def _integer_scores(self) -> np.ndarray:
        """Scores rounded to multiples of `resolution`, as integers."""
        return np.rint(self.scores / self.resolution).astype(np.int64)

    def score_distribution(self) -> tuple[int, np.ndarray]:
        """Exact distribution of the rounded window score under the background.

        Returns (lowest integer score, probabilities of lowest, lowest + 1, ...); the
        score in bits is the integer times `resolution`. Dynamic programming over the
        columns: each column shifts the running distribution by its four scores,
        weighted by the background.
        """
        ints = self._integer_scores()
        low = ints.min(axis=1)
        shifted = ints - low[:, None]
        dist = np.ones(1)
        for col in shifted:
            new = np.zeros(len(dist) + int(col.max()))
            for base in range(4):
                new[col[base] : col[base] + len(dist)] += self.background[base] * dist
            dist = new
        return int(low.sum()), dist

    @functools.cached_property
    def survival(self) -> tuple[int, np.ndarray]:
        """(lowest integer score, P(rounded score >= lowest + k) for each k), computed once.

        Summed from the top so that tiny tail probabilities keep their precision.
        """
        low, dist = self.score_distribution()
        return low, np.cumsum(dist[::-1])[::-1]

    def p_value(self, score: float) -> float:
        """P(window score >= score) for a random background sequence.

        Example:
            >>> PWM("x", np.array([[1.0, 0, 0, 0]] * 2)).p_value(2.0)
            0.0625
        """
        low, sf = self.survival
        k = int(np.ceil(score / self.resolution - 1e-9)) - low
        return float(sf[min(max(k, 0), len(sf) - 1)]) if k < len(sf) else 0.0

    def score_for_p_value(self, p: float) -> float:
        """The lowest attainable score whose p-value is <= p (inf when none is that rare)."""
        low, sf = self.survival
        _, dist = self.score_distribution()
        ok = np.flatnonzero((sf <= p * (1 + 1e-9)) & (dist > 0))
        return math.inf if len(ok) == 0 else float((int(ok[0]) + low) * self.resolution)


def pwm_from_counts(
    matrix: CountMatrix,
    background: np.ndarray | None = None,
    pseudocount: float = 1.0,
    resolution: float = 0.001,
) -> PWM:
    """Log-odds PWM (bits) of a count matrix.

    Args:
        matrix: counts, e.g. from parse_jaspar or parse_meme.
        background: A C G T probabilities; default the matrix's own (MEME) or uniform.
        pseudocount: total pseudocount per column, shared out by the background.
        resolution: score granularity of p-values (bits).

    Returns:
        PWM with N x 4 log2-odds scores (A C G T), the normalised background and
        `resolution`.

    Raises:
        ValueError: a negative pseudocount, or a zero probability (pseudocount 0).

    Example:
        >>> m = CountMatrix("m", np.array([[3.0, 1, 0, 0]]))
        >>> pwm_from_counts(m, pseudocount=4.0).scores.round(3).tolist()
        [[1.0, 0.0, -1.0, -1.0]]
    """
    if background is None:
        background = matrix.background if matrix.background is not None else _UNIFORM
    bg = np.asarray(background, dtype=np.float64)
    bg = bg / bg.sum()
    if pseudocount < 0:
        raise ValueError(f"pseudocount must be >= 0, got {pseudocount}")
    counts = matrix.counts.astype(np.float64)
    sites = counts.sum(axis=1, keepdims=True)
    probs = (counts + pseudocount * bg) / (sites + pseudocount)
    with np.errstate(divide="ignore"):
        scores = np.log2(probs / bg)
    if not np.isfinite(scores).all():
        raise ValueError(
            f"motif {matrix.name!r} has zero counts: use pseudocount > 0 to score them"
        )
    return PWM(matrix.name, scores, bg, resolution)
