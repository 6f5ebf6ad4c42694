"""Names as users write them: the one path ↔ URI pair, store keys that cannot leave the
store, and sample names safe in any file name or command line, whatever the input is called."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from helixflow.errors import HelixflowError
from helixflow.samples import Sample, plan_samples, safe_name, sample_name
from helixflow.store import Store, identify
from helixflow.uris import file_uri, is_local, local_path, scheme_of, store_key, to_uri, uri_name

# What people call files: spaces, `;`, quotes, `$()`, backticks, `+`, `%` (and a literal
# `%20`), `#`, `?`, `&`, non-ASCII letters, a leading dash.
NASTY = [
    "my sample_R1.fq",
    "a;b.fq",
    "it's \"quoted\".fq",
    "$(touch pwned)`id`.fq",
    "a+b.fq",
    "100%.fq",
    "literal%20space.fq",
    "hash#question?and&.fq",
    "Müller_Ångström_日本.fq",
    "-rf.fq",
]


@pytest.mark.parametrize("name", NASTY)
def test_path_uri_round_trip(tmp_path: Path, name: str) -> None:
    path = (tmp_path / "dir with space;$(x)" / name)
    uri = file_uri(path)
    assert uri.startswith("file:///") and " " not in uri and "$" not in uri
    assert local_path(uri) == path.resolve()
    assert uri_name(uri) == name
    assert to_uri(str(path)) == uri and to_uri(uri) == uri  # a plain path and its URI agree
    assert is_local(uri) and is_local(str(path))


def test_literal_percent_20_stays_literal(tmp_path: Path) -> None:
    path = tmp_path / "a%20b.fq"
    assert file_uri(path).endswith("/a%2520b.fq")
    assert local_path(file_uri(path)).name == "a%20b.fq"
    assert local_path(str(path)) == path  # a plain path is never decoded
    # a URI typed by hand is decoded (a space), a raw one is taken as written
    assert local_path("file:///d/a%20b.fq") == Path("/d/a b.fq")
    assert local_path("file:///d/my sample.fq") == Path("/d/my sample.fq")
    assert local_path("file://localhost/d/x.fq") == Path("/d/x.fq")
    with pytest.raises(ValueError, match="not a local file URI"):
        local_path("file://otherhost/d/x.fq")


def test_plain_paths_with_colons_and_semicolons_are_not_uris() -> None:
    assert scheme_of("sample:1;2.fq") == "" and scheme_of("C:\\data\\x.fq") == ""
    assert scheme_of("s3://b/k") == "s3" and scheme_of("FILE:///x") == "file"
    assert local_path("run;1/a;b.fq") == Path("run;1/a;b.fq")
    # s3 keys stay raw, as S3 stores them (no percent-encoding)
    key = "s3://bucket/in/my sample;$(x)'+%20é_R1.fq"
    assert to_uri(key) == key and uri_name(key) == "my sample;$(x)'+%20é_R1.fq"
    assert not is_local(key)


@pytest.mark.parametrize("name", NASTY)
def test_identify_local_file_with_any_name(tmp_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.setenv("HELIXFLOW_HOME", str(tmp_path / "home"))
    path = tmp_path / "in;$(touch x)" / name
    path.parent.mkdir()
    path.write_bytes(b"@r\nACGT\n+\nIIII\n")
    for given in (str(path), file_uri(path)):
        ref = identify(given)
        assert ref.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert ref.uri == file_uri(path) and local_path(ref.uri) == path
        assert ref.name == name


def test_store_under_a_nasty_root_publishes_and_reads(tmp_path: Path) -> None:
    root = tmp_path / "st ore;'$(touch pwned)'%20é"
    store = Store(str(root))
    src = tmp_path / "x.bin"
    src.write_bytes(b"bytes")
    art = store.publish(src, run_id="r1", stage="ingest", name="my sample+%20é.bin")
    view = root / "runs" / "r1" / "ingest" / "my sample+%20é.bin"
    assert local_path(art.uri) == view and view.read_bytes() == b"bytes"
    assert art.name == "my sample+%20é.bin" and store.read_bytes(art.uri) == b"bytes"
    again = store.link_into_run(art, "r2")
    assert local_path(again.uri) == root / "runs" / "r2" / "ingest" / "my sample+%20é.bin"
    assert store.glob(store.run_uri("r*", "ingest", "*.bin")) == sorted([art.uri, again.uri])
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("bad", ["..", "../x", "a/../../b", ".", "x/./y", "a\nb", "a\rb",
                                 "nul\0byte"])
def test_store_keys_cannot_leave_the_store(tmp_path: Path, bad: str) -> None:
    store = Store(str(tmp_path / "s"))
    with pytest.raises(HelixflowError, match="store key"):
        store.run_uri("r1", bad, "x")
    with pytest.raises(HelixflowError, match="store key"):
        store_key(bad)
    s3 = Store("s3://bucket/prefix", storage_options={})
    with pytest.raises(HelixflowError, match="store key"):
        s3.join("runs", bad)


def test_store_keys_fold_slashes_and_keep_names() -> None:
    assert store_key("/runs//r1/x y;z/") == "runs/r1/x y;z"
    s3 = Store("s3://bucket/pre fix", storage_options={})
    assert s3.run_uri("r1", "ingest", "a b+%20.parquet") == \
        "s3://bucket/pre fix/runs/r1/ingest/a b+%20.parquet"


@pytest.mark.parametrize(("given", "expected"), [
    ("my sample", "my_sample"),
    ("../../etc/passwd", "etc_passwd"),
    ("/abs/path", "abs_path"),
    ("line\nbreak", "line_break"),
    ("$(touch pwned);`id`", "touch_pwned_id_"),
    ("'quoted\"", "quoted_"),
    ("-rf", "rf"),
    (".hidden", "hidden"),
    ("..", "sample"),
    ("", "sample"),
    ("Probe_Müller+1.5", "Probe_Müller+1.5"),
    ("a%20b", "a_20b"),
])
def test_safe_name(given: str, expected: str) -> None:
    assert safe_name(given) == expected
    assert safe_name(expected) == expected or expected == "sample"


def test_safe_name_bounds_length_and_keeps_long_names_apart() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_name(a).encode()) <= 120 and safe_name(a) != safe_name(b)
    assert len(safe_name("日" * 200).encode()) <= 120


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc", "a\nb", ".x", "-x", "", "a b"])
def test_sample_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(ValueError, match="sample name"):
        Sample(name=name, r1="x.fq")


def test_samples_from_nasty_file_names(tmp_path: Path) -> None:
    d = tmp_path / "in $(touch x);'q'"
    names = ["my sample;'q+%20é_R1.fastq.gz", "my sample;'q+%20é_R2.fastq.gz"]
    # as plain paths, as file URIs (percent-encoded), as raw S3 keys: one pair each
    for inputs in ([str(d / n) for n in names], [file_uri(d / n) for n in names],
                   [f"s3://bucket/in $(x)/{n}" for n in names]):
        [sample] = plan_samples(inputs)
        assert sample.layout == "paired" and sample.name == "my_sample_q+_20é"
        assert (sample.r1, sample.r2) == tuple(inputs)  # the URIs as given, for lineage
    assert sample_name("s3://b/../../etc/passwd_R1.fq") == "passwd"
    assert sample_name("s3://b/k/..\n.._R1.fq") == "R1"  # no '..', no line break left
    # bare R1/R2 take the (decoded) folder name
    [bare] = plan_samples([file_uri(tmp_path / "Probe Müller" / f"R{i}.fq") for i in (1, 2)])
    assert bare.name == "Probe_Müller"


def test_file_names_differing_only_in_unsafe_characters_stay_distinct_samples() -> None:
    samples = plan_samples(["a b.fq", "a;b.fq", "a_b.fq"])
    assert len({s.name for s in samples}) == 3
    assert all(safe_name(s.name) == s.name for s in samples)
