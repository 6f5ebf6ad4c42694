"""Store: content addressing, atomic publish, run views, identity; local and S3 (moto server)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest

from helixflow.errors import InputError
from helixflow.store import Store, identify
from helixflow.uris import local_path


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_publish_is_content_addressed_and_linked(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    data = b"ACGT" * 1000
    digest = hashlib.sha256(data).hexdigest()
    a = store.publish(_file(tmp_path / "a.parquet", data), run_id="r1", stage="ingest")
    b = store.publish(_file(tmp_path / "a.parquet", data), run_id="r2", stage="ingest")
    assert a.sha256 == b.sha256 == digest
    assert a.cas_uri == b.cas_uri and a.uri != b.uri
    cas, view1, view2 = (local_path(u) for u in (a.cas_uri, a.uri, b.uri))
    assert cas.read_bytes() == data
    # stored once: both run views are hard links to the one object
    assert os.stat(view1).st_ino == os.stat(view2).st_ino == os.stat(cas).st_ino
    assert view1 == tmp_path / "store" / "runs" / "r1" / "ingest" / "a.parquet"
    # nothing left in scratch or as .part files
    assert not list((tmp_path / "store").rglob("*.part"))


def test_link_into_run_shows_cached_artifact(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    art = store.publish(_file(tmp_path / "x.bin", b"x"), run_id="r1", stage="st")
    again = store.link_into_run(art, "r2")
    assert again.uri.endswith("/runs/r2/st/x.bin") and local_path(again.uri).read_bytes() == b"x"
    assert again.cas_uri == art.cas_uri


def test_scratch_is_removed_even_on_failure(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    with pytest.raises(RuntimeError), store.scratch() as scratch:
        (scratch / "half.parquet").write_bytes(b"partial")
        seen = scratch
        raise RuntimeError("task died")
    assert not seen.exists()
    assert not (tmp_path / "s" / "runs").exists()


def test_identify_local_uses_sha256_and_sees_changes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HELIXFLOW_HOME", str(tmp_path / "home"))
    path = _file(tmp_path / "r.fq", b"@r\nA\n+\nI\n")
    ref = identify(str(path))
    assert ref.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ref.identity.startswith("sha256:")
    path.write_bytes(b"@r\nC\n+\nI\n")  # altered out of band: a new identity
    assert identify(str(path)).sha256 != ref.sha256


def test_identify_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        identify(str(tmp_path / "nope.fq.gz"))


def test_store_rejects_unknown_scheme() -> None:
    from helixflow.errors import HelixflowError

    with pytest.raises(HelixflowError, match="unsupported store"):
        Store("ftp://example/x")


@pytest.mark.integration
def test_s3_publish_identify_and_read(moto_endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="hf-store")
    store = Store("s3://hf-store/prefix")
    art = store.publish(_file(tmp_path / "a.parquet", b"hello"), run_id="r1", stage="ingest")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="hf-store")["Contents"]}
    assert "prefix/runs/r1/ingest/a.parquet" in keys
    assert f"prefix/objects/{art.sha256[:2]}/{art.sha256}.parquet" in keys
    assert store.read_bytes(art.uri) == b"hello"
    ref = identify(art.uri)
    assert ref.etag and ref.size == 5 and ref.identity.startswith("etag:")


@pytest.mark.integration
def test_s3_killed_upload_leaves_nothing_visible(moto_endpoint: str, tmp_path: Path) -> None:
    """A publisher killed mid-multipart-upload leaves no key under objects/ or runs/."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="hf-kill")
    big = tmp_path / "big.parquet"
    # s3fs switches to a multipart upload above 2 x its 50 MiB part size
    with open(big, "wb") as handle:
        for _ in range(112):
            handle.write(os.urandom(1 << 20))
    # The publisher is slowed after its first part so the kill lands mid-upload every time;
    # the upload itself is real, to the moto server over HTTP.
    script = textwrap.dedent(f"""
        import asyncio, s3fs.core
        real = s3fs.core.S3FileSystem._call_s3
        async def slow(self, method, *args, **kwargs):
            out = await real(self, method, *args, **kwargs)
            if method == "upload_part":
                await asyncio.sleep(60)
            return out
        s3fs.core.S3FileSystem._call_s3 = slow
        from helixflow.store import Store
        Store("s3://hf-kill/p").publish({str(big)!r}, run_id="r1", stage="ingest", move=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if s3.list_multipart_uploads(Bucket="hf-kill").get("Uploads"):
            break
        if proc.poll() is not None:
            pytest.fail(f"publisher exited ({proc.returncode}) before it could be killed")
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("no multipart upload was seen")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    listing = s3.list_objects_v2(Bucket="hf-kill")
    assert listing.get("KeyCount", 0) == 0, listing.get("Contents")
