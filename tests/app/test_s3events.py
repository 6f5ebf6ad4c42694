"""The pure S3-notification helpers: parsing, key filters, mate names, event ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helixflow.app.s3events import (
    OBJECT_CREATED,
    MalformedMessage,
    ObjectCreated,
    announcement_id,
    created_event,
    is_older,
    key_matches,
    mate_of,
    parse_message,
    timeout_event,
)
from helixflow.errors import HelixflowError


def s3_record(key: str, etag: str = "abc", size: int = 5, name: str = "ObjectCreated:Put",
              bucket: str = "raw", sequencer: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "size": size, "eTag": etag}
    if sequencer:
        obj["sequencer"] = sequencer
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
        "eventTime": "2026-01-02T03:04:05.000Z",
        "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"}, "object": obj},
    }


def body(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def test_keys_are_url_decoded_like_aws_encodes_them() -> None:
    # AWS (and moto) encode keys with quote_plus: space -> '+', '+' -> '%2B', '=' -> '%3D'.
    parsed = parse_message(body(s3_record("runs/a+b%2Bc%3D.fq.gz", etag='"e1"')), "m-1")
    [rec] = parsed.records
    assert rec.key == "runs/a b+c=.fq.gz"
    assert rec.etag == "e1"  # quotes stripped
    assert rec.uri == "s3://raw/runs/a b+c=.fq.gz"
    assert rec.size == 5 and rec.event_name == "ObjectCreated:Put"


def test_test_event_is_ignored_with_a_reason() -> None:
    msg = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                      "Time": "2026-01-01T00:00:00.000Z", "Bucket": "raw"})
    parsed = parse_message(msg, "m-2")
    assert parsed.records == []
    assert parsed.skipped == ["s3:TestEvent for bucket raw"]


def test_sns_wrapped_notification() -> None:
    inner = body(s3_record("x/s1_R1.fastq.gz", sequencer="0055AED6DCD90281E5"))
    msg = json.dumps({"Type": "Notification", "MessageId": "sns-1", "Message": inner})
    [rec] = parse_message(msg, "m-3").records
    assert rec.key == "x/s1_R1.fastq.gz" and rec.sequencer == "0055AED6DCD90281E5"


def test_sns_wrapped_test_event() -> None:
    inner = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "raw"})
    msg = json.dumps({"Type": "Notification", "Message": inner})
    assert parse_message(msg).records == []


def test_eventbridge_object_created() -> None:
    msg = json.dumps({
        "version": "0", "detail-type": "Object Created", "source": "aws.s3",
        "time": "2026-01-02T03:04:05Z",
        "detail": {"bucket": {"name": "raw"}, "reason": "PutObject",
                   "object": {"key": "d/s_R2.fq.gz", "size": 7, "etag": "e9",
                              "sequencer": "617f08299329d189"}},
    })
    [rec] = parse_message(msg).records
    assert (rec.bucket, rec.key, rec.etag, rec.size) == ("raw", "d/s_R2.fq.gz", "e9", 7)
    deleted = json.loads(msg)
    deleted["detail-type"] = "Object Deleted"
    assert parse_message(json.dumps(deleted)).records == []


def test_other_event_names_are_skipped() -> None:
    parsed = parse_message(body(s3_record("a.fq", name="ObjectRemoved:Delete"),
                                s3_record("b.fq", name="s3:ObjectCreated:Copy")))
    assert [r.key for r in parsed.records] == ["b.fq"]
    assert parsed.records[0].event_name == "ObjectCreated:Copy"
    assert parsed.skipped == ["ObjectRemoved:Delete for s3://raw/a.fq"]


@pytest.mark.parametrize("bad, problem", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"hello": 1}', "not an S3 notification"),
    ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', "record 1 lacks"),
    ('{"Type": "Notification", "Message": "nope"}', "SNS Message is not JSON"),
])
def test_malformed_bodies_name_the_message(bad: str, problem: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_message(bad, "msg-42")
    assert isinstance(info.value, HelixflowError)
    assert "msg-42" in str(info.value) and problem in str(info.value)
    assert info.value.message_id == "msg-42" and info.value.hint


def test_key_matching() -> None:
    assert key_matches("runs/a_R1.fastq.gz")
    assert key_matches("runs/A_R1.FQ.GZ")  # case does not matter
    assert key_matches("a.fq")
    assert not key_matches("runs/a.bam")
    assert not key_matches("runs/a.fastq.gz.tmp")
    assert key_matches("runs/a.fq", prefix="runs/")
    assert not key_matches("other/a.fq", prefix="runs/")
    assert key_matches("runs/lane1/s_1.fq", patterns=["s_*.fq"])  # basename globs too
    assert not key_matches("runs/s.fq", patterns=["*.bam"])


@pytest.mark.parametrize("key, role, mate, sample", [
    ("runs/ecoli_R1.fastq.gz", "R1", "runs/ecoli_R2.fastq.gz", "ecoli"),
    ("runs/ecoli_R2.fastq.gz", "R2", "runs/ecoli_R1.fastq.gz", "ecoli"),
    ("S1_L001_R1_001.fastq.gz", "R1", "S1_L001_R2_001.fastq.gz", "S1_L001"),
    ("x/c_2.fq", "R2", "x/c_1.fq", "c"),
    ("x/c.r1.fq.gz", "R1", "x/c.r2.fq.gz", "c"),  # tag case is kept
    ("runs/demo/R1.fastq.gz", "R1", "runs/demo/R2.fastq.gz", "demo"),
    ("runs/sample one_R2.fq.gz", "R2", "runs/sample one_R1.fq.gz", "sample_one"),
    ("runs/lonely.fastq.gz", "single", None, "lonely"),
])
def test_mate_names(key: str, role: str, mate: str | None, sample: str) -> None:
    info = mate_of(key)
    assert (info.role, info.mate_key, info.sample) == (role, mate, sample)
    if mate is not None:
        assert mate_of(mate).mate_key == key


def obj(key: str, etag: str = "e1", size: int = 10) -> ObjectCreated:
    return ObjectCreated(bucket="raw", key=key, etag=etag, size=size)


def test_announcement_id_is_deterministic() -> None:
    r1, r2 = obj("s_R1.fq"), obj("s_R2.fq")
    assert announcement_id([r1, r2]) == announcement_id([obj("s_R1.fq"), obj("s_R2.fq")])
    assert announcement_id([r1, r2]) != announcement_id([r1, obj("s_R2.fq", etag="e2")])
    assert announcement_id([r1]) != announcement_id([r1, r2])
    assert announcement_id([r1]) != announcement_id([obj("s_R1.fq", etag="other")])


def test_created_event_for_a_pair() -> None:
    r1 = ObjectCreated(bucket="raw", key="d/s_R1.fq.gz", etag="e1", size=10, sequencer="0A")
    r2 = obj("d/s_R2.fq.gz", etag="e2", size=12)
    spec = created_event(r1, r2)
    assert spec.event == OBJECT_CREATED
    assert spec.id == announcement_id([r1, r2])
    assert spec.resource == {"prefect.resource.id": "s3://raw/d/s_R1.fq.gz",
                             "prefect.resource.name": "s_R1.fq.gz", "helixflow.etag": "e1"}
    assert spec.related == [{"prefect.resource.id": "s3://raw/d/s_R2.fq.gz",
                             "prefect.resource.name": "s_R2.fq.gz", "helixflow.etag": "e2",
                             "prefect.resource.role": "mate"}]
    p = spec.payload
    assert p["inputs"] == ["s3://raw/d/s_R1.fq.gz", "s3://raw/d/s_R2.fq.gz"]
    assert (p["sample"], p["layout"], p["etag"], p["size"]) == ("s", "paired", "e1", 10)
    assert (p["bucket"], p["key"], p["sequencer"]) == ("raw", "d/s_R1.fq.gz", "0A")
    assert p["mate"] == {"key": "d/s_R2.fq.gz", "etag": "e2", "size": 12,
                         "uri": "s3://raw/d/s_R2.fq.gz"}
    json.dumps(p)  # the payload must be plain JSON


def test_created_event_single_and_valid_for_prefect() -> None:
    from prefect.events.schemas.events import Event

    spec = created_event(obj("d/lone.fastq.gz"))
    assert spec.payload["inputs"] == ["s3://raw/d/lone.fastq.gz"]
    assert spec.payload["layout"] == "single" and "mate" not in spec.payload
    assert spec.related == []
    Event(event=spec.event, resource=spec.resource, related=spec.related,
          payload=spec.payload, id=spec.id)
    pair = created_event(obj("d/s_R1.fq"), obj("d/s_R2.fq"))
    event = Event(event=pair.event, resource=pair.resource, related=pair.related,
                  payload=pair.payload, id=pair.id)
    assert event.related[0].role == "mate"


def test_timeout_event() -> None:
    spec = timeout_event(obj("d/s_R1.fq"), "d/s_R2.fq", 3600.04)
    assert spec.event == "helixflow.s3.pair.timeout"
    assert spec.resource["prefect.resource.id"] == "s3://raw/d/s_R1.fq"
    assert spec.payload["expected_mate"] == "d/s_R2.fq" and spec.payload["waited_seconds"] == 3600
    assert spec.id == timeout_event(obj("d/s_R1.fq"), "d/s_R2.fq", 1).id


def test_sequencer_order() -> None:
    assert is_older("0055AED6DCD90281E5", "0055AED6DCD90281E6")
    assert not is_older("0055AED6DCD90281E6", "0055AED6DCD90281E5")
    assert is_older("FF", "0100")  # compared after left-padding
    assert not is_older(None, "01") and not is_older("01", None)
