"""The store: one fsspec-backed place for every artifact, local (`file://`) or `s3://`.

Layout under the store root:

    objects/<aa>/<sha256><ext>     content-addressed bytes, written once, shared by runs
    runs/<run-id>/<stage>/<name>   a run's view of its artifacts (hard link locally, copy on S3)
    lineage/runs/<run-id>.jsonl    lineage records (see `helixflow.lineage`)
    prefect-results/               Prefect result persistence (so results outlive a worker)

Publishing is atomic: bytes are written to a local scratch file first, then moved into
place with `os.replace` (local) or uploaded in one `PutObject`/multipart upload whose key
only becomes visible when the upload completes (S3). A task that dies mid-way leaves
nothing under `objects/` or `runs/`. URIs, paths and keys: `helixflow.uris`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fsspec

from helixflow.artifacts import Artifact, FileRef
from helixflow.errors import HelixflowError, InputError, exception_chain
from helixflow.settings import helixflow_home
from helixflow.uris import (
    asset_key,
    file_uri,
    is_local,
    local_path,
    scheme_of,
    store_key,
    suffix_of,
    to_uri,
)

_CHUNK = 8 << 20


def sha256_file(path: str | Path) -> str:
    """sha256 of a local file, streamed in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _HashCache:
    """sha256 of local files keyed by (path, size, mtime, inode), so re-runs don't re-hash.

    A file changed out of band gets a new mtime or size and is hashed again.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def _connect(self) -> sqlite3.Connection:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=30)
        con.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT, size INTEGER, mtime_ns INTEGER,"
            " inode INTEGER, sha256 TEXT, PRIMARY KEY (path, size, mtime_ns, inode))"
        )
        return con

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        with contextlib.closing(self._connect()) as con:
            row = con.execute(
                "SELECT sha256 FROM hashes WHERE path=? AND size=? AND mtime_ns=? AND inode=?", key
            ).fetchone()
            if row:
                return str(row[0])
            digest = sha256_file(path)
            with con:
                con.execute("INSERT OR REPLACE INTO hashes VALUES (?,?,?,?,?)", (*key, digest))
            return digest


def s3_storage_options_from_env() -> dict[str, Any]:
    """s3fs options from the standard AWS environment, including a custom endpoint.

    Credentials themselves are left to botocore's own chain (env, profile, instance role),
    so they never pass through helixflow's objects.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options.setdefault("client_kwargs", {})["region_name"] = region
    return options



def s3_problem(exc: BaseException) -> str | None:
    """What a permanent S3 error means (`access denied`, `no such bucket`, `no such
    object`), from the exception s3fs raises; None for anything else (transient errors
    among them: those are retried, see `helixflow.retries`)."""
    if isinstance(exc, PermissionError):
        return "access denied"
    if isinstance(exc, FileNotFoundError):
        codes = {getattr(e, "response", {}).get("Error", {}).get("Code")
                 for e in exception_chain(exc)}
        return "no such bucket" if "NoSuchBucket" in codes else "no such object"
    return None


_S3_HINTS = {
    "access denied": "check the credentials and the bucket's policy (s3:GetObject, "
                     "s3:PutObject, s3:ListBucket)",
    "no such bucket": "check the bucket name and the endpoint, or create the bucket",
    "no such object": "check the bucket and key",
}


@contextlib.contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """Permanent S3 errors as one `HelixflowError` naming `uri` (no retry can fix them);
    anything else passes through unchanged.

    Example:
        >>> with s3_errors("s3://locked/hf/runs/r1/x.parquet"):  # doctest: +SKIP
        ...     store.fs.put_file(src, "locked/hf/runs/r1/x.parquet")
        HelixflowError: s3://locked/hf/runs/r1/x.parquet: access denied
    """
    try:
        yield
    except (PermissionError, FileNotFoundError) as exc:
        problem = s3_problem(exc)
        raise HelixflowError(f"{uri}: {problem}", hint=_S3_HINTS.get(problem or "")) from exc


class Store:
    """A store root URL plus the fsspec options to reach it. Cheap to pickle (Ray, Prefect).

    Example:
        >>> store = Store("file:///tmp/helixflow-doc-store")
        >>> store.join("runs", "r1", "ingest")
        'file:///tmp/helixflow-doc-store/runs/r1/ingest'
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        url = to_uri(url)
        scheme = scheme_of(url)
        if scheme not in ("file", "s3", "memory"):
            raise HelixflowError(
                f"unsupported store URL {url!r}", hint="use a local path, file://… or s3://bucket/prefix"
            )
        self.url = url.rstrip("/")
        self.scheme = scheme
        if storage_options is None and scheme == "s3":
            storage_options = s3_storage_options_from_env()
        self.storage_options = dict(storage_options or {})
        self._fs: fsspec.AbstractFileSystem | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "scheme": self.scheme, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fs = None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- addressing ---------------------------------------------------------------------

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            self._fs = fsspec.filesystem(self.scheme, **self.storage_options)
        return self._fs

    def join(self, *parts: str) -> str:
        """The URI of `parts` (names as written, `/`-separated) under the store root.

        Percent-encoded under a `file://` root, raw under `s3://` (keys as S3 stores them).
        A `..` or `.` segment, a NUL or a line break is refused: no key leaves the store.
        """
        segments = [seg for p in parts if p for seg in store_key(p).split("/")]
        if self.scheme == "file":
            segments = [quote(seg) for seg in segments]
        return "/".join([self.url, *segments])

    def _path(self, uri: str) -> str:
        """fsspec path for a URI inside this store (or any URI of the same scheme)."""
        if self.scheme == "file":
            return str(local_path(uri))
        return uri.split("://", 1)[1] if "://" in uri else uri

    def run_uri(self, run_id: str, *parts: str) -> str:
        return self.join("runs", run_id, *parts)

    def asset_uri(self, run_id: str, *parts: str) -> str:
        """`run_uri` as a Prefect asset key (see `asset_key`)."""
        return asset_key(self.run_uri(run_id, *parts))

    def cas_uri(self, sha256: str, suffix: str) -> str:
        return self.join("objects", sha256[:2], sha256 + suffix)

    def label_uri(self, label: str) -> str:
        """The stored object a `FileRef.label` (`name@sha256:…`) names; a URI (what data
        written before labels holds) is returned as is."""
        name, sep, identity = label.rpartition("@sha256:")
        if not sep:
            return label
        return self.cas_uri(identity, suffix_of(name))

    # -- reading ------------------------------------------------------------------------

    def _errors(self, uri: str) -> contextlib.AbstractContextManager[None]:
        """Around every remote call: permanent S3 errors name `uri` (see `s3_errors`)."""
        return s3_errors(uri) if self.scheme == "s3" else contextlib.nullcontext()

    def check_access(self) -> None:
        """Fail now, naming the store, if its bucket is missing or denied: one listing of
        at most one key under the store's prefix (what a prefix-scoped policy allows, unlike
        HeadBucket); nothing is written."""
        if self.scheme != "s3":
            return
        bucket, _, prefix = self._path(self.url).partition("/")
        try:
            self.fs.call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1,
                            Prefix=f"{prefix}/" if prefix else "")
        except (PermissionError, FileNotFoundError) as exc:
            problem = "access denied" if isinstance(exc, PermissionError) else "no such bucket"
            raise HelixflowError(f"{self.url}: {problem}", hint=_S3_HINTS[problem]) from exc

    def exists(self, uri: str) -> bool:
        if self.scheme == "file":
            return local_path(uri).exists()
        with self._errors(uri):
            return bool(self.fs.exists(self._path(uri)))

    def open(self, uri: str, mode: str = "rb") -> Any:
        with self._errors(uri):
            return self.fs.open(self._path(uri), mode)

    def read_bytes(self, uri: str) -> bytes:
        with self.open(uri, "rb") as handle:
            return bytes(handle.read())

    def glob(self, pattern_uri: str) -> list[str]:
        """URIs matching a glob inside the store, sorted."""
        with self._errors(pattern_uri):
            paths = sorted(self.fs.glob(self._path(pattern_uri)))
        if self.scheme == "file":
            return [file_uri(p) for p in paths]
        return [f"{self.scheme}://{p}" for p in paths]

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private local directory for a task's outputs before they are published.

        For a local store it lives inside the store (`.tmp/`) so publishing is a rename on
        the same filesystem; otherwise under `$HELIXFLOW_HOME/tmp`. Always removed.
        """
        if self.scheme == "file":
            base = local_path(self.url) / ".tmp"
        else:
            base = helixflow_home() / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="scratch-", dir=base))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _put_atomic(self, src: Path, uri: str, *, move: bool) -> None:
        """Make `uri` hold the bytes of local file `src`, all at once or not at all."""
        if self.scheme == "file":
            dest = local_path(uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
            if move:
                try:
                    os.replace(src, tmp)
                except OSError:  # another filesystem: copy then rename
                    shutil.copyfile(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, dest)
        else:
            # S3: the key becomes visible only when PutObject / CompleteMultipartUpload succeeds.
            with self._errors(uri):
                self.fs.put_file(str(src), self._path(uri))

    def _link_view(self, cas: str, view: str) -> None:
        """Expose a CAS object at a run-folder path without storing the bytes again locally."""
        if self.scheme == "file":
            dest = local_path(view)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
            try:
                os.link(local_path(cas), tmp)
            except OSError:
                shutil.copyfile(local_path(cas), tmp)
            os.replace(tmp, dest)
        else:
            # S3 has no links: a server-side copy (no transfer through this machine).
            with self._errors(view):
                self.fs.copy(self._path(cas), self._path(view))

    def publish(
        self,
        src: str | Path,
        *,
        run_id: str,
        stage: str,
        name: str | None = None,
        media_type: str = "application/octet-stream",
        move: bool = True,
        **fields: Any,
    ) -> Artifact:
        """Publish a finished local file as an artifact of `run_id` at `stage`.

        The bytes go to the content-addressed object (skipped when identical bytes are
        already stored), then appear in the run's folder. Returns the `Artifact`.
        """
        src = Path(src)
        name = name or src.name
        if "/" in name or name.startswith("."):
            raise ValueError(f"artifact name must be a plain file name, got {name!r}")
        digest = sha256_file(src)
        size = src.stat().st_size
        cas = self.cas_uri(digest, suffix_of(name))
        if not self.exists(cas):
            self._put_atomic(src, cas, move=move)
        elif move:
            src.unlink(missing_ok=True)
        view = self.run_uri(run_id, stage, name)
        self._link_view(cas, view)
        return Artifact(
            uri=view, cas_uri=cas, sha256=digest, size=size, stage=stage,
            media_type=media_type, **fields,
        )

    def link_into_run(self, artifact: Artifact, run_id: str) -> Artifact:
        """Show an artifact made by an earlier run (a cache hit) in `run_id`'s folder too."""
        view = self.run_uri(run_id, artifact.stage, artifact.name)
        if view != artifact.uri:
            self._link_view(artifact.cas_uri, view)
        return artifact.model_copy(update={"uri": view})

    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """Small metadata files (lineage, manifests), atomically."""
        with self.scratch() as tmp:
            path = tmp / "blob"
            path.write_bytes(data)
            self._put_atomic(path, uri, move=True)


def identify(uri: str, storage_options: dict[str, Any] | None = None) -> FileRef:
    """The content identity of an input file: sha256 locally (cached by path, size, mtime),
    ETag and size on S3 (no download). A missing file is an `InputError`."""
    if is_local(uri):
        path = local_path(uri)
        if not path.is_file():
            raise InputError(str(path), "no such file", hint="check the path")
        digest = _HashCache(helixflow_home() / "hashcache.sqlite").sha256(path)
        return FileRef(uri=file_uri(path), size=path.stat().st_size, sha256=digest)
    options = storage_options
    if options is None and uri.startswith("s3://"):
        options = s3_storage_options_from_env()
    fs, path = fsspec.core.url_to_fs(uri, **(options or {}))
    try:
        info = fs.info(path)
    except (PermissionError, FileNotFoundError) as exc:
        problem = s3_problem(exc) or "unreadable"
        raise InputError(uri, problem, hint=_S3_HINTS.get(problem)) from None
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"') or None
    size = int(info.get("size") or info.get("Size") or 0)
    if etag is None:
        with fs.open(path, "rb") as handle:
            digest = hashlib.sha256()
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return FileRef(uri=uri, size=size, sha256=digest.hexdigest())
    return FileRef(uri=uri, size=size, etag=etag)
