"""Turning a list of input FASTQ URIs into samples (single-end, paired, interleaved).

A sample's name becomes part of file names in scratch folders and the store, of task run
names and of BAM read groups, so it is always a `safe_name`: whatever a file is called,
the sample's name cannot leave a folder, hide a file or start an option. The input URIs
themselves are kept exactly (lineage records them as given).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from pydantic import BaseModel, field_validator

from helixflow.errors import HelixflowError
from helixflow.uris import uri_name

# R1/R2 naming conventions: sample_R1.fastq.gz, sample_R1_001.fastq.gz, sample_1.fq.gz
_MATE = re.compile(
    r"^(?P<stem>.+?)(?P<sep>[._-])(?P<tag>R?)(?P<mate>[12])"
    r"(?P<rest>(?:_\d{3})?\.(?:fq|fastq)(?:\.gz|\.bgz)?)$",
    re.I,
)
_BARE = re.compile(r"^R?[12](?:_\d{3})?\.(?:fq|fastq)(?:\.gz|\.bgz)?$", re.I)
_EXT = re.compile(r"\.(?:fq|fastq)(?:\.gz|\.bgz)?$", re.I)


_UNSAFE = re.compile(r"[^\w.+-]+")  # \w: letters and digits of any script, and _
_MAX_NAME_BYTES = 120  # leaves room for suffixes within the 255-byte file-name limit


def safe_name(text: str, fallback: str = "sample") -> str:
    """`text` as a name safe in any file name and command line: letters and digits of any
    script, `_ . + -` kept; every other run of characters (space, `/`, `;`, quotes, `$`,
    `%`, line breaks) becomes `_`; no leading `.` or `-`; at most 120 UTF-8 bytes (a
    longer name ends in `~` and 8 hex digits of its sha256, so names stay distinct).

    Example:
        >>> safe_name("my sample"), safe_name("../../etc/passwd"), safe_name("Probe_Müller")
        ('my_sample', 'etc_passwd', 'Probe_Müller')
    """
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", text)).lstrip(".-_")
    if len(name.encode()) > _MAX_NAME_BYTES:
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        name = name.encode()[: _MAX_NAME_BYTES - 9].decode(errors="ignore") + "~" + digest
    return name or fallback


class Sample(BaseModel):
    """One sequencing sample: R1 (and R2 when paired in two files)."""

    name: str
    r1: str
    r2: str | None = None
    interleaved: bool = False

    @field_validator("name")
    @classmethod
    def _safe(cls, value: str) -> str:
        if not value or safe_name(value, fallback="") != value:
            raise ValueError(
                f"sample name {value!r} cannot be used in file names; use letters, digits and"
                f" _ . + - (for example {safe_name(value)!r})"
            )
        return value

    @property
    def layout(self) -> str:
        if self.r2:
            return "paired"
        return "interleaved" if self.interleaved else "single"


def _folder(uri: str) -> str:
    """Everything before the file name (the key that keeps mates of one folder together)."""
    text = uri.rstrip("/")
    return text.rsplit("/", 1)[0] if "/" in text else ""


def _mate_match(uri: str) -> re.Match[str] | None:
    """R1/R2 in the file name; a bare `R1.fastq.gz` takes its folder's name as the stem."""
    base = uri_name(uri)
    parent = uri_name(_folder(uri)) if _folder(uri) else ""
    if _BARE.match(base) and parent:
        base = f"{parent}_{base}"
    return _MATE.match(base)


def sample_name(uri: str) -> str:
    """A readable sample name from a file name (`x/ecoli_R1.fq.gz` → `ecoli`, `my
    sample_R1.fq` → `my_sample`), made a `safe_name`."""
    match = _mate_match(uri)
    stem = match.group("stem") if match else _EXT.sub("", uri_name(uri))
    return safe_name(stem)


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
        key = f"{_folder(uri)}/{match.group('stem')}{match.group('rest')}"
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
        names = [uri_name(uri) for uri in inputs]
    label = "+".join(names[:3]) or "no inputs"
    if len(names) > 3:
        label += f"+{len(names) - 3}"
    return f"pipeline {label}"
