"""URIs and paths: which is which (`a:b.fq` is a path, `s3://b/k` a URI), `file://` URIs
percent-encoded as RFC 8089 says and decoded back, names as files are named, store keys
that cannot leave the store, and URIs as Prefect asset keys. No I/O beyond resolving a
local path; the store (`helixflow.store`) and everything naming files build on these.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import unquote

from helixflow.errors import HelixflowError

# `scheme://…`: a URI. Anything else is a plain path, even with `:` or `;` in it.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(?=//)")


def scheme_of(uri: str) -> str:
    """`file`, `s3`, … for a URI; "" for a plain path (`a:b.fq` is a path, not a URI)."""
    match = _SCHEME.match(str(uri))
    return match.group(1).lower() if match else ""


def is_local(uri: str) -> bool:
    return scheme_of(uri) in ("", "file")


def file_uri(path: str | Path) -> str:
    """The `file://` URI of a local path (absolute, symlinks resolved), percent-encoded as
    RFC 8089 says: `my sample.fq` → `…/my%20sample.fq`, a literal `%20` → `%2520`.
    `local_path` is its inverse.

    Example:
        >>> file_uri("/data/my sample+1%20.fq")
        'file:///data/my%20sample%2B1%2520.fq'
    """
    return Path(path).expanduser().resolve().as_uri()


def local_path(uri: str | Path) -> Path:
    """The filesystem path of a `file://` URI (percent-decoded) or of a plain path (as is).

    `file://localhost/p` and `file:///p` are local; a raw `file:///my sample.fq` typed by
    hand decodes to itself. Other schemes (`s3://`) are a `ValueError`.

    Example:
        >>> local_path("file:///data/my%20sample%3B.fq"), local_path("/data/a%20b.fq")
        (PosixPath('/data/my sample;.fq'), PosixPath('/data/a%20b.fq'))
    """
    text = str(uri)
    scheme = scheme_of(text)
    if scheme == "file":
        rest = text[len("file://"):]
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise ValueError(f"not a local file URI (host {host!r}): {text}")
        return Path(unquote(slash + path))
    if scheme:
        raise ValueError(f"not a local URI: {text}")
    return Path(text).expanduser()


def uri_name(uri: str) -> str:
    """The last path segment of a URI or path, as the file is named (decoded for `file://`).

    Example:
        >>> uri_name("file:///d/my%20sample_R1.fq"), uri_name("s3://b/k/x%20y.fq")
        ('my sample_R1.fq', 'x%20y.fq')
    """
    text = str(uri).rstrip("/")
    if scheme_of(text) == "file":
        return local_path(text).name
    return text.rsplit("/", 1)[-1]


def display_name(uri: str) -> str:
    """How a URI is shown to users: a plain path for local files, else the URI."""
    return str(local_path(uri)) if is_local(uri) else uri


def to_uri(path_or_uri: str | Path) -> str:
    """A plain path as its absolute `file://` URI, a `file://` URI in its canonical
    encoding; other URIs (`s3://bucket/key`, keys raw as S3 stores them) as given."""
    text = str(path_or_uri)
    scheme = scheme_of(text)
    if scheme in ("", "file"):
        return file_uri(local_path(text))
    return text.rstrip("/") if text.endswith("/") and len(text) > len(scheme) + 4 else text


def suffix_of(name: str) -> str:
    """The full extension of a file name (`.fastq.gz`, `.parquet`), used for CAS keys."""
    base = name.rsplit("/", 1)[-1]
    parts = base.split(".")
    if len(parts) == 1:
        return ""
    exts = [p for p in parts[1:] if p and len(p) <= 8 and p.isalnum()]
    return "." + ".".join(exts[-2:]) if exts else ""


def store_key(key: str) -> str:
    """`key` (a relative `/`-separated store path) checked to stay inside the store: no
    `..` or `.` segment, no NUL or line break; outer slashes dropped, inner `//` folded.

    Example:
        >>> store_key("/runs/r1/ingest/my sample.reads.00000.parquet/")
        'runs/r1/ingest/my sample.reads.00000.parquet'
    """
    segments = [seg for seg in key.split("/") if seg]
    for seg in segments:
        if seg in (".", "..") or any(c in seg for c in "\0\n\r"):
            raise HelixflowError(
                f"store key {key!r} would leave the store or break lines ({seg!r})",
                hint="names in the store are plain file names: no '..', NUL or line breaks",
            )
    return "/".join(segments)


# Characters Prefect refuses in asset keys (prefect.types.names); `%` among them, so keys
# cannot be percent-encoded.
_ASSET_UNSAFE = re.compile(r"[\s#?&%\"'<>\[\]{}|\\^`]")


def asset_key(uri: str) -> str:
    """A URI as a Prefect asset key: a `file://` URI decoded (so names read as written),
    then spaces become `+` and other characters Prefect refuses `_`. Asset keys are the
    UI's names; lineage records keep the exact URIs.

    Example:
        >>> asset_key("file:///d/my%20sample%3B%25.fq")
        'file:///d/my+sample;_.fq'
    """
    shown = f"file://{local_path(uri)}" if scheme_of(uri) == "file" else uri
    key = _ASSET_UNSAFE.sub(lambda m: "+" if m.group() == " " else "_", shown)
    if len(key) > 512:
        key = key[:448] + "~" + hashlib.sha256(uri.encode()).hexdigest()[:16]
    return key
