"""Lineage records: where every artifact came from, stored next to the artifacts.

Prefect assets record materialisations, but not on cache hits; these records are written
by the flow for every artifact a run uses or makes, cached or not, to
`<store>/lineage/runs/<run-id>.jsonl` (rewritten atomically as the run goes on).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

import helixflow
from helixflow.artifacts import Artifact, FileRef
from helixflow.store import Store


@functools.cache
def code_version() -> dict[str, str | None]:
    """helixflow's package version and, when running from a git checkout, its commit."""
    root = Path(helixflow.__file__).resolve().parent.parent
    commit: str | None = None
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True, text=True, timeout=10, check=False,
            )
            commit = out.stdout.strip() or None
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=10, check=False,
            )
            if commit and dirty.stdout.strip():
                commit += "-dirty"
        except (OSError, subprocess.TimeoutExpired):
            commit = None
    return {"helixflow": helixflow.__version__, "git": commit}


class LineageRecord(BaseModel):
    """One artifact as used or produced by one run."""

    uri: str
    cas_uri: str
    sha256: str
    size: int
    rows: int | None = None
    media_type: str
    stage: str
    run_id: str
    flow_run_id: str | None = None
    task_run_id: str | None = None
    task_name: str
    cached: bool = False
    parameters: dict[str, Any] = Field(default_factory=dict)
    code_version: dict[str, str | None] = Field(default_factory=dict)
    tools: dict[str, str] = Field(default_factory=dict)
    upstream: list[FileRef] = Field(default_factory=list)
    executed_on: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(
        cls,
        artifact: Artifact,
        *,
        run_id: str,
        flow_run_id: str | None,
        task_run_id: str | None,
        cached: bool,
    ) -> LineageRecord:
        return cls(
            uri=artifact.uri, cas_uri=artifact.cas_uri, sha256=artifact.sha256 or "",
            size=artifact.size, rows=artifact.rows, media_type=artifact.media_type,
            stage=artifact.stage, run_id=run_id, flow_run_id=flow_run_id,
            task_run_id=task_run_id, task_name=artifact.producer, cached=cached,
            parameters=artifact.params, code_version=code_version(), tools=artifact.tools,
            upstream=artifact.upstream, executed_on=artifact.executed_on,
            metadata=artifact.metadata, created_at=artifact.created_at,
        )

    def artifact(self) -> Artifact:
        """The artifact this record describes, to feed a later run's tasks."""
        return Artifact(
            uri=self.uri, cas_uri=self.cas_uri, sha256=self.sha256, size=self.size,
            rows=self.rows, media_type=self.media_type, stage=self.stage,
            producer=self.task_name, params=self.parameters, tools=self.tools,
            upstream=self.upstream, metadata=self.metadata, created_at=self.created_at,
            executed_on=self.executed_on,
        )


class LineageLog:
    """The lineage records of one run, flushed to the store atomically."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.records: list[LineageRecord] = []

    @property
    def uri(self) -> str:
        return self.store.join("lineage", "runs", f"{self.run_id}.jsonl")

    def add(self, record: LineageRecord) -> None:
        self.records.append(record)

    def flush(self) -> None:
        if not self.records:
            return
        body = "".join(r.model_dump_json() + "\n" for r in self.records)
        self.store.write_bytes_atomic(self.uri, body.encode())


def load_records(store: Store) -> list[LineageRecord]:
    """Every lineage record in the store, oldest run file first."""
    records: list[LineageRecord] = []
    for uri in store.glob(store.join("lineage", "runs", "*.jsonl")):
        for line in store.read_bytes(uri).decode().splitlines():
            if line.strip():
                records.append(LineageRecord.model_validate_json(line))
    return records


class LineageNode(BaseModel):
    uri: str
    sha256: str | None = None
    etag: str | None = None
    size: int | None = None
    task_name: str | None = None
    run_id: str | None = None
    children: list[LineageNode] = Field(default_factory=list)


class LineageGraph:
    """Upstream/downstream queries over lineage records."""

    def __init__(self, records: Iterable[LineageRecord]) -> None:
        self.records = list(records)
        self.by_uri: dict[str, LineageRecord] = {}
        self.by_sha: dict[str, LineageRecord] = {}
        for rec in self.records:  # later records win: the newest run's view of a URI
            self.by_uri[rec.uri] = rec
            self.by_uri.setdefault(rec.cas_uri, rec)
            self.by_sha[rec.sha256] = rec
        # downstream edges keyed by the upstream's URI, and by the URI of every record with
        # the same bytes (a cache hit shows the same object under a new run's URI)
        self.downstream_of: dict[str, list[LineageRecord]] = {}
        uris_of_sha: dict[str, set[str]] = {}
        for rec in self.by_uri.values():
            uris_of_sha.setdefault(rec.sha256, set()).add(rec.uri)
        for rec in list(self.by_uri.values()):
            for up in rec.upstream:
                keys = {up.uri} | (uris_of_sha.get(up.sha256, set()) if up.sha256 else set())
                for key in keys:
                    bucket = self.downstream_of.setdefault(key, [])
                    if all(r.uri != rec.uri for r in bucket):
                        bucket.append(rec)

    def resolve(self, uri_or_sha: str) -> LineageRecord | FileRef | None:
        """A record by run-folder URI, CAS URI or sha256; an input by URI."""
        key = uri_or_sha.rstrip("/")
        if key in self.by_uri:
            return self.by_uri[key]
        if key in self.by_sha:
            return self.by_sha[key]
        for rec in self.by_uri.values():
            for up in rec.upstream:
                if up.uri == key or up.sha256 == key:
                    return up
        return None

    def _node(self, item: LineageRecord | FileRef) -> LineageNode:
        if isinstance(item, LineageRecord):
            return LineageNode(
                uri=item.uri, sha256=item.sha256, size=item.size, task_name=item.task_name,
                run_id=item.run_id,
            )
        return LineageNode(uri=item.uri, sha256=item.sha256, etag=item.etag, size=item.size)

    def _parent(self, up: FileRef) -> LineageRecord | None:
        """The record an upstream reference points at: by URI first (exact), else by content."""
        return self.by_uri.get(up.uri) or (self.by_sha.get(up.sha256) if up.sha256 else None)

    def upstream(
        self, item: LineageRecord | FileRef, depth: int = 50, seen: frozenset[str] = frozenset()
    ) -> LineageNode:
        node = self._node(item)
        if isinstance(item, LineageRecord) and depth > 0 and item.uri not in seen:
            for up in item.upstream:
                parent = self._parent(up)
                if parent is not None and parent.uri in seen | {item.uri}:
                    parent = None  # identical bytes under two names: stop, don't loop
                node.children.append(self.upstream(parent or up, depth - 1, seen | {item.uri}))
        return node

    def downstream(
        self, item: LineageRecord | FileRef, depth: int = 50, seen: frozenset[str] = frozenset()
    ) -> LineageNode:
        node = self._node(item)
        if depth > 0 and item.uri not in seen:
            for rec in self.downstream_of.get(item.uri, []):
                if rec.uri not in seen and rec.uri != item.uri:
                    node.children.append(self.downstream(rec, depth - 1, seen | {item.uri}))
        return node

def render(node: LineageNode, fmt: Literal["text", "json", "mermaid"], *, upstream: bool) -> str:
    """A lineage tree as indented text, JSON or a mermaid flowchart."""
    if fmt == "json":
        return node.model_dump_json(indent=2, exclude_none=True)
    if fmt == "mermaid":
        return mermaid([node], upstream=upstream)
    lines: list[str] = []

    def walk(n: LineageNode, indent: int) -> None:
        ident = f"sha256:{n.sha256}" if n.sha256 else (f"etag:{n.etag}" if n.etag else "")
        made = f"  <- {n.task_name}" if n.task_name else "  (input)"
        lines.append(f"{'  ' * indent}{n.uri}  {ident}{made}")
        for child in n.children:
            walk(child, indent + 1)

    walk(node, 0)
    return "\n".join(lines)


def _graph(roots: list[LineageNode], *, upstream: bool
           ) -> tuple[dict[str, LineageNode], set[tuple[str, str, str]]]:
    """Nodes by URI and (from, to, task) edges of lineage trees, inputs pointing at
    outputs."""
    nodes: dict[str, LineageNode] = {}
    edges: set[tuple[str, str, str]] = set()

    def walk(n: LineageNode) -> None:
        nodes.setdefault(n.uri, n)
        for child in n.children:
            nodes.setdefault(child.uri, child)
            if upstream:
                edges.add((child.uri, n.uri, n.task_name or ""))
            else:
                edges.add((n.uri, child.uri, child.task_name or ""))
            walk(child)

    for root in roots:
        walk(root)
    return nodes, edges


def _label(n: LineageNode) -> str:
    return n.uri.rsplit("/", 1)[-1]


def mermaid(roots: list[LineageNode], *, upstream: bool = True) -> str:
    """A mermaid `flowchart LR` of lineage trees (edges point from input to output)."""
    nodes, edges = _graph(roots, upstream=upstream)
    ids = {uri: f"n{i}" for i, uri in enumerate(nodes)}
    lines = ["flowchart LR"]
    for uri, n in nodes.items():
        label = _label(n).replace('"', "'")
        short = (n.sha256 or n.etag or "")[:12]
        lines.append(f'  {ids[uri]}["{label}<br/>{short}"]')
    for src, dst, label in sorted((ids[a], ids[b], t) for a, b, t in edges):
        lines.append(f"  {src} -->|{label}| {dst}" if label else f"  {src} --> {dst}")
    return "\n".join(lines)


#: Past this many files a picture of every file is unreadable: files are grouped by the
#: task that made them (inputs by folder), with their counts.
MAX_PICTURE_NODES = 60


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(roots: list[LineageNode], *, upstream: bool = True,
        max_nodes: int = MAX_PICTURE_NODES) -> str:
    """Graphviz DOT source of lineage trees, left to right, inputs first; grouped by
    producing task when there are more than `max_nodes` files."""
    nodes, edges = _graph(roots, upstream=upstream)
    group = {uri: uri for uri in nodes}
    if len(nodes) > max_nodes:
        for uri, n in nodes.items():
            group[uri] = f"task:{n.task_name}" if n.task_name else \
                f"input:{uri.rsplit('/', 1)[0]}"
    members: dict[str, list[LineageNode]] = {}
    for uri, n in nodes.items():
        members.setdefault(group[uri], []).append(n)
    ids = {g: f"n{i}" for i, g in enumerate(members)}
    lines = ["digraph lineage {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#666666"];']
    for g, ns in members.items():
        first = ns[0]
        made = first.task_name is not None
        if len(ns) == 1:
            label = f"{_label(first)}\n{(first.sha256 or first.etag or '')[:12]}"
        else:
            label = f"{first.task_name if made else 'inputs'}\n{len(ns)} files"
        fill = "#dbeafe" if made else "#fef3c7"
        lines.append(f"  {ids[g]} [label={_dot_quote(label)}, fillcolor=\"{fill}\"];")
    grouped = {(group[a], group[b], t) for a, b, t in edges if group[a] != group[b]}
    for a, b, task in sorted(grouped):
        lines.append(f"  {ids[a]} -> {ids[b]} [label={_dot_quote(task)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def picture(dot_source: str, fmt: str = "png") -> bytes | None:
    """The DOT graph drawn by Graphviz (`dot`), or None when Graphviz is not installed
    or fails (the mermaid source still describes the graph)."""
    import shutil
    import subprocess

    exe = shutil.which("dot")
    if exe is None:
        return None
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_source.encode(), capture_output=True,
                          timeout=120, check=False)
    return proc.stdout if proc.returncode == 0 and proc.stdout else None
