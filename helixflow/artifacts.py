"""Typed references to files: the values that flow between tasks instead of bare paths.

A `FileRef` names a file by URI *and* by content (sha256, or ETag+size for S3 objects
that were not read by us), so caches and lineage follow content, not names.
An `Artifact` is a file helixflow produced and published to the store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from helixflow.uris import uri_name


class FileRef(BaseModel):
    """A file identified by content.

    Example:
        >>> FileRef(uri="file:///data/R1.fq.gz", sha256="ab" * 32, size=10).identity
        'sha256:abababababababababababababababababababababababababababababababab'
    """

    uri: str
    size: int
    sha256: str | None = None
    etag: str | None = None

    @property
    def identity(self) -> str:
        """The content identity used in cache keys: never the URI alone."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.etag:
            return f"etag:{self.etag}:{self.size}"
        raise ValueError(f"{self.uri} has neither sha256 nor ETag")

    @property
    def name(self) -> str:
        """The file's name as written (decoded from a `file://` URI)."""
        return uri_name(self.uri)

    @property
    def label(self) -> str:
        """Name and content identity (`part-0.parquet@sha256:…`): how data written from
        this file names it. Unlike the URI it is the same in every store and run, so
        outputs stay byte-identical; lineage maps it back to URIs.

        Example:
            >>> FileRef(uri="s3://b/runs/r1/ingest/a.parquet", sha256="ab" * 32, size=1).label[:23]
            'a.parquet@sha256:ababab'
        """
        return f"{self.name}@{self.identity}"


class Artifact(FileRef):
    """A published output: content-addressed object plus its view in a run's folder.

    `uri` is the run-folder view (`<store>/runs/<run>/<stage>/<name>`), where users look;
    `cas_uri` is the content-addressed object (`<store>/objects/<aa>/<sha256><ext>`), which
    is shared by every run that produced the same bytes.
    """

    cas_uri: str
    stage: str
    media_type: str
    rows: int | None = None
    producer: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    tools: dict[str, str] = Field(default_factory=dict)
    upstream: list[FileRef] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    executed_on: str | None = None

    def ref(self) -> FileRef:
        """This artifact as an upstream reference."""
        return FileRef(uri=self.uri, size=self.size, sha256=self.sha256)


class Skipped(BaseModel):
    """A stage that had too little input to mean anything for one sample, FASTA or
    embedding method: the run goes on and says so (a warning, not an error).

    Tasks return it instead of their artifact; flows collect it (`RunRecorder.skip`) and the
    run summary, the CLI and the `skipped` UI table render it.

    Example:
        >>> Skipped(stage="analysis", sample="lshvec", reason="2 vectors, need at least 3").line
        'analysis skipped for lshvec: 2 vectors, need at least 3'
    """

    stage: str
    sample: str
    """Whom it was skipped for: a sample, a FASTA label, an embedding method or `run`."""
    reason: str

    @property
    def line(self) -> str:
        return f"{self.stage} skipped for {self.sample}: {self.reason}"
