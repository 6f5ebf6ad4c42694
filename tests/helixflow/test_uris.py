"""URIs and paths: extensions for content-addressed keys, URIs as Prefect asset keys.

(Round trips of nasty file names through paths, URIs and store keys: test_names.py.)
"""

from __future__ import annotations

from helixflow.uris import asset_key, suffix_of


def test_suffix_of() -> None:
    assert suffix_of("a.reads.00001.parquet") == ".00001.parquet"
    assert suffix_of("x.fastq.gz") == ".fastq.gz"
    assert suffix_of("README") == ""


def test_asset_key_is_accepted_by_prefect_for_any_uri() -> None:
    from prefect.types.names import validate_valid_asset_key

    uri = "s3://incoming/run 7/a#b?c&d%e[1]{x}|y^z`'\"<>.fastq.gz"
    key = asset_key(uri)
    assert validate_valid_asset_key(key) == key
    assert key == "s3://incoming/run+7/a_b_c_d_e_1__x__y_z_____.fastq.gz"
    long = "s3://b/" + "k" * 600
    assert len(asset_key(long)) <= 512 and asset_key(long) != asset_key(long + "x")
    assert asset_key("file:///data/plain_R1.fq.gz") == "file:///data/plain_R1.fq.gz"
