"""Turning a list of input FASTQ URIs into samples (single-end, paired, interleaved)."""

from __future__ import annotations

import re

from pydantic import BaseModel

from helixflow.errors import HelixflowError

# R1/R2 naming conventions: sample_R1.fastq.gz, sample_R1_001.fastq.gz, sample_1.fq.gz
_MATE = re.compile(
    r"^(?P<stem>.+?)(?P<sep>[._-])(?P<tag>R?)(?P<mate>[12])"
    r"(?P<rest>(?:_\d{3})?\.(?:fq|fastq)(?:\.gz|\.bgz)?)$",
    re.I,
)
_BARE = re.compile(r"^R?[12](?:_\d{3})?\.(?:fq|fastq)(?:\.gz|\.bgz)?$", re.I)
_EXT = re.compile(r"\.(?:fq|fastq)(?:\.gz|\.bgz)?$", re.I)


class Sample(BaseModel):
    """One sequencing sample: R1 (and R2 when paired in two files)."""

    name: str
    r1: str
    r2: str | None = None
    interleaved: bool = False

    @property
    def layout(self) -> str:
        if self.r2:
            return "paired"
        return "interleaved" if self.interleaved else "single"


def _basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _parent(uri: str) -> str:
    parts = uri.rstrip("/").rsplit("/", 2)
    return parts[-2] if len(parts) > 1 else ""


def _mate_match(uri: str) -> re.Match[str] | None:
    """R1/R2 in the file name; a bare `R1.fastq.gz` takes its folder's name as the stem."""
    base = _basename(uri)
    if _BARE.match(base) and _parent(uri):
        base = f"{_parent(uri)}_{base}"
    return _MATE.match(base)


def sample_name(uri: str) -> str:
    """A readable sample name from a file name (`x/ecoli_R1.fq.gz` → `ecoli`)."""
    match = _mate_match(uri)
    stem = match.group("stem") if match else _EXT.sub("", _basename(uri))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "sample"


def plan_samples(inputs: list[str], *, interleaved: bool = False) -> list[Sample]:
    """Group inputs into samples by R1/R2 names; two un-named files are one pair.

    Example:
        >>> [s.layout for s in plan_samples(["a_R1.fq.gz", "a_R2.fq.gz", "b.fq"])]
        ['paired', 'single']
    """
    if not inputs:
        raise HelixflowError("no input files given")
    if interleaved:
        return [Sample(name=sample_name(u), r1=u, interleaved=True) for u in inputs]
    keyed: dict[str, dict[str, str]] = {}
    order: list[str] = []
    singles: list[str] = []
    for uri in inputs:
        match = _mate_match(uri)
        if match is None:
            singles.append(uri)
            continue
        key = uri[: len(uri) - len(_basename(uri))] + match.group("stem") + match.group("rest")
        mates = keyed.setdefault(key, {})
        if key not in order:
            order.append(key)
        mate = match.group("mate")
        if mate in mates:
            raise HelixflowError(f"two R{mate} files for one sample: {mates[mate]} and {uri}")
        mates[mate] = uri
    samples: list[Sample] = []
    for key in order:
        mates = keyed[key]
        if set(mates) == {"1", "2"}:
            samples.append(Sample(name=sample_name(mates["1"]), r1=mates["1"], r2=mates["2"]))
        else:
            singles.extend(mates.values())
    if len(singles) == 2 and not samples:
        # Two files without R1/R2 names: take them as a pair, in the order given.
        return [Sample(name=sample_name(singles[0]), r1=singles[0], r2=singles[1])]
    samples.extend(Sample(name=sample_name(u), r1=u) for u in singles)
    names = [s.name for s in samples]
    for i, sample in enumerate(samples):
        if names.count(sample.name) > 1:
            samples[i] = sample.model_copy(update={"name": f"{sample.name}-{i + 1}"})
    return samples


def run_label(inputs: list[str], *, interleaved: bool = False) -> str:
    """A readable flow run name: `pipeline <sample>+<sample>+…` (three names at most)."""
    try:
        names = [s.name for s in plan_samples(list(inputs), interleaved=interleaved)]
    except HelixflowError:
        names = [uri.rstrip("/").rsplit("/", 1)[-1] for uri in inputs]
    label = "+".join(names[:3]) or "no inputs"
    if len(names) > 3:
        label += f"+{len(names) - 3}"
    return f"pipeline {label}"
