"""Cache keys follow content, parameters, code and tool versions — not URIs."""

from __future__ import annotations

import pytest

from helixflow.artifacts import FileRef
from helixflow.caching import content_key


def ref(uri: str, sha: str) -> FileRef:
    return FileRef(uri=uri, size=10, sha256=sha * 64)


def test_same_content_other_uri_same_key() -> None:
    a = content_key("t.f", "1", {"r1": ref("file:///a/R1.fq", "a"), "k": 21})
    b = content_key("t.f", "1", {"r1": ref("s3://b/moved.fq", "a"), "k": 21})
    assert a == b


def test_other_content_same_uri_other_key() -> None:
    a = content_key("t.f", "1", {"r1": ref("file:///a/R1.fq", "a")})
    b = content_key("t.f", "1", {"r1": ref("file:///a/R1.fq", "b")})
    assert a != b


def test_parameters_version_and_task_change_key() -> None:
    base = content_key("t.f", "1", {"k": 21})
    assert content_key("t.f", "1", {"k": 25}) != base
    assert content_key("t.f", "2", {"k": 21}) != base
    assert content_key("t.g", "1", {"k": 21}) != base


def test_runtime_parameters_are_ignored() -> None:
    a = content_key("t.f", "1", {"k": 1, "run_id": "r1", "store": "file:///x"})
    b = content_key("t.f", "1", {"k": 1, "run_id": "r2", "store": "s3://y"})
    assert a == b


def test_tool_versions_enter_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import helixflow.caching as caching

    monkeypatch.setattr(caching, "tool_version", lambda name: "1.0")
    a = content_key("t.f", "1", {}, tools=("samtools",))
    monkeypatch.setattr(caching, "tool_version", lambda name: "1.1")
    assert content_key("t.f", "1", {}, tools=("samtools",)) != a


def test_etag_identity_and_unhashable_paths() -> None:
    s3 = FileRef(uri="s3://b/k", size=5, etag="abc")
    assert content_key("t", "1", {"x": s3}) != content_key(
        "t", "1", {"x": FileRef(uri="s3://b/k", size=6, etag="abc")}
    )
    from pathlib import Path

    with pytest.raises(TypeError, match="FileRef"):
        content_key("t", "1", {"p": Path("/x")})


def test_dataclass_parameters_are_keyed_by_value() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Params:
        k: int = 21

    assert content_key("t", "1", {"p": Params()}) == content_key("t", "1", {"p": Params()})
    assert content_key("t", "1", {"p": Params()}) != content_key("t", "1", {"p": Params(k=25)})


def test_files_nested_in_models_count_by_content() -> None:
    from pydantic import BaseModel

    class Holder(BaseModel):
        kmers: FileRef
        k: int

    a = Holder(kmers=ref("file:///runs/r1/x.parquet", "a"), k=21)
    b = Holder(kmers=ref("file:///runs/r2/x.parquet", "a"), k=21)
    c = Holder(kmers=ref("file:///runs/r2/x.parquet", "c"), k=21)
    assert content_key("t", "1", {"s": a}) == content_key("t", "1", {"s": b})
    assert content_key("t", "1", {"s": a}) != content_key("t", "1", {"s": c})
