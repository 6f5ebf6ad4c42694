"""The S3 watcher: pairing, exactly-once, timeouts, restarts, SQS and polling sources."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from helixflow.app.s3events import EventSpec, parse_message
from helixflow.app.watch import EmitError, WatchConfig, Watcher
from helixflow.app.watch_ledger import Ledger
from helixflow.app.watch_sources import Batch, PollingSource, SqsSource, connect_bucket_to_queue
from helixflow.errors import HelixflowError

# ----------------------------------------------------------------------------- helpers


class Recorder:
    """An in-memory `emit`: keeps every EventSpec; `fail` makes the next calls raise."""

    def __init__(self) -> None:
        self.events: list[EventSpec] = []
        self.flushes = 0
        self.fail = False

    def __call__(self, spec: EventSpec) -> None:
        if self.fail:
            raise EmitError("prefect is down")
        self.events.append(spec)

    def flush(self) -> None:
        self.flushes += 1

    def created(self) -> list[EventSpec]:
        return [e for e in self.events if e.event == "helixflow.s3.object.created"]

    def inputs(self) -> list[list[str]]:
        return [e.payload["inputs"] for e in self.created()]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """Hands out queued message bodies, one fetch per `push`; records acknowledgements."""

    idle_wait = 0.0

    def __init__(self) -> None:
        self.queue: list[list[tuple[str, str]]] = []
        self.acked: list[str] = []
        self._n = 0

    def push(self, *bodies: str) -> None:
        batch = []
        for b in bodies:
            self._n += 1
            batch.append((f"m{self._n}", b))
        self.queue.append(batch)

    def fetch(self) -> list[Batch]:
        if not self.queue:
            return []
        out = []
        for message_id, body in self.queue.pop(0):
            parsed = parse_message(body, message_id)
            out.append(Batch(message_id, parsed.records, parsed.skipped,
                             ack=lambda m=message_id: self.acked.append(m)))
        return out


def notification(*objects: tuple[str, str], bucket: str = "raw", size: int = 10,
                 name: str = "ObjectCreated:Put") -> str:
    """An S3 notification body for (key, etag) pairs, keys encoded as AWS does."""
    from urllib.parse import quote_plus

    return json.dumps({"Records": [
        {"eventName": name, "eventTime": "2026-01-01T00:00:00.000Z",
         "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(k), "eTag": e,
                                                       "size": size}}}
        for k, e in objects
    ]})


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Watcher, FakeSource, Recorder, Clock]]:
    config = WatchConfig(queue_url="https://sqs.example/q", ledger=tmp_path / "w.sqlite",
                         pair_timeout=600)
    source, rec, clock = FakeSource(), Recorder(), Clock()
    watcher = Watcher(config, source, emit=rec, clock=clock)
    yield watcher, source, rec, clock
    watcher.close()


R1 = "runs/s1_R1.fastq.gz"
R2 = "runs/s1_R2.fastq.gz"
U1, U2 = f"s3://raw/{R1}", f"s3://raw/{R2}"

# ----------------------------------------------------------------------------- pairing


def test_r1_then_r2(setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup
    source.push(notification((R1, "a1")))
    stats = watcher.run_once()
    assert (stats.pending, stats.announced, rec.events) == (1, 0, [])
    assert [p["key"] for p in watcher.ledger.pending()] == [R1]
    source.push(notification((R2, "b1")))
    stats = watcher.run_once()
    assert stats.announced == 1 and rec.inputs() == [[U1, U2]]
    [spec] = rec.created()
    assert spec.payload["sample"] == "s1" and spec.payload["mate"]["etag"] == "b1"
    assert spec.related[0]["prefect.resource.role"] == "mate"
    assert watcher.ledger.pending() == []
    assert source.acked == ["m1", "m2"] and rec.flushes == 1


def test_r2_then_r1_keeps_r1_first(setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup
    source.push(notification((R2, "b1")))
    source.push(notification((R1, "a1")))
    watcher.run_once()
    watcher.run_once()
    assert rec.inputs() == [[U1, U2]]
    assert rec.created()[0].resource["prefect.resource.id"] == U1


def test_pair_in_one_message_and_singles(
        setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup
    source.push(notification((R1, "a1"), (R2, "b1"), ("runs/lone.fq.gz", "c1"),
                             ("runs/notes.txt", "d1")))
    stats = watcher.run_once()
    assert rec.inputs() == [[U1, U2], ["s3://raw/runs/lone.fq.gz"]]
    assert (stats.records, stats.announced, stats.ignored, stats.pending) == (4, 2, 1, 1)


def test_url_encoded_keys_pair(setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup
    source.push(notification(("in/sample one_R1.fq.gz", "a"), ("in/sample one_R2.fq.gz", "b")))
    watcher.run_once()
    assert rec.inputs() == [["s3://raw/in/sample one_R1.fq.gz", "s3://raw/in/sample one_R2.fq.gz"]]
    assert rec.created()[0].payload["sample"] == "sample_one"


def test_test_event_and_other_events_ignored(
        setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup
    source.push(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "raw"}),
                notification(("x.fq", "e"), name="ObjectRemoved:Delete"))
    stats = watcher.run_once()
    assert (stats.ignored, stats.announced, rec.events) == (2, 0, [])
    assert source.acked == ["m1", "m2"]  # handled, so deleted from the queue


def test_prefix_and_bucket_filters(tmp_path: Path) -> None:
    config = WatchConfig(queue_url="q", bucket="raw", prefix="runs/", ledger=tmp_path / "l")
    source, rec = FakeSource(), Recorder()
    watcher = Watcher(config, source, emit=rec)
    source.push(notification(("other/x.fq", "1"), ("runs/y.fq", "2")),
                notification(("runs/z.fq", "3"), bucket="elsewhere"))
    stats = watcher.run_once()
    assert rec.inputs() == [["s3://raw/runs/y.fq"]] and stats.ignored == 2


# ----------------------------------------------------------------------------- exactly once


def test_same_message_twice_announces_once(
        setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup
    msg = notification((R1, "a1"), (R2, "b1"))
    source.push(msg)
    source.push(msg)
    watcher.run_once()
    stats = watcher.run_once()
    assert rec.inputs() == [[U1, U2]] and stats.duplicates == 2 and stats.announced == 0
    source.push(notification((R1, "a1")))  # one mate again, alone
    assert watcher.run_once().announced == 0 and watcher.ledger.pending() == []


def test_new_etag_is_a_new_announcement(
        setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup
    source.push(notification((R1, "a1"), (R2, "b1"), ("runs/x.fq", "x1")))
    watcher.run_once()
    source.push(notification((R2, "b2"), ("runs/x.fq", "x2")))  # a new R2 version only
    watcher.run_once()
    created = rec.created()
    assert len(created) == 4
    pair2 = created[2]
    assert pair2.payload["etag"] == "a1" and pair2.payload["mate"]["etag"] == "b2"
    assert created[3].payload["etag"] == "x2"
    assert len({e.id for e in created}) == 4
    # the old R2 version delivered late changes nothing
    source.push(notification((R2, "b1")))
    assert watcher.run_once().duplicates == 1 and len(rec.created()) == 4


def test_older_sequencer_is_not_announced(
        setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup

    def with_seq(key: str, etag: str, seq: str) -> str:
        doc = json.loads(notification((key, etag)))
        doc["Records"][0]["s3"]["object"]["sequencer"] = seq
        return json.dumps(doc)

    source.push(with_seq("a.fq", "new", "0055AED6DCD90281E6"))
    source.push(with_seq("a.fq", "old", "0055AED6DCD90281E5"))
    watcher.run_once()
    stats = watcher.run_once()
    assert stats.ignored == 1 and [e.payload["etag"] for e in rec.created()] == ["new"]


def test_emit_failure_rolls_back_and_leaves_the_message(
        setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, _ = setup
    msg = notification(("a.fq", "e1"))
    rec.fail = True
    source.push(msg)
    stats = watcher.run_once()
    assert stats.errors == 1 and source.acked == [] and watcher.ledger.announcements() == []
    assert watcher.ledger.latest("raw", "a.fq") is None  # rolled back too
    rec.fail = False
    source.push(msg)  # redelivered after the visibility timeout
    assert watcher.run_once().announced == 1 and source.acked == ["m2"]


def test_restart_does_not_reannounce(tmp_path: Path) -> None:
    config = WatchConfig(queue_url="q", ledger=tmp_path / "l.sqlite")
    rec = Recorder()
    first = FakeSource()
    w1 = Watcher(config, first, emit=rec)
    first.push(notification((R1, "a1"), (R2, "b1"), ("runs/p_R1.fq", "p1")))
    w1.run_once()
    w1.close()
    second = FakeSource()
    w2 = Watcher(config, second, emit=rec)
    second.push(notification((R1, "a1"), (R2, "b1")))
    second.push(notification(("runs/p_R2.fq", "p2")))  # the pending mate survived too
    w2.run_once()
    w2.run_once()
    assert rec.inputs() == [[U1, U2], ["s3://raw/runs/p_R1.fq", "s3://raw/runs/p_R2.fq"]]
    w2.close()


def test_ledger_schema(tmp_path: Path) -> None:
    with Ledger(tmp_path / "x.sqlite") as ledger:
        mode = ledger._db.execute("PRAGMA journal_mode").fetchone()[0]
        tables = {r[0] for r in ledger._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
    assert mode == "wal"
    assert tables == {"announced", "versions", "pending", "poll_seen", "poll_cursor"}


def test_default_ledger_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HELIXFLOW_HOME", str(tmp_path))
    config = WatchConfig(name="runs", bucket="raw")
    assert config.ledger_path == tmp_path / "watch" / "runs.sqlite"
    assert config.mode == "poll"
    with pytest.raises(ValueError, match="queue_url"):
        WatchConfig()


# ----------------------------------------------------------------------------- timeouts


def test_lone_mate_times_out(setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, clock = setup
    source.push(notification((R1, "a1")))
    watcher.run_once()
    clock.now += 599
    assert watcher.run_once().timeouts == 0
    clock.now += 2
    stats = watcher.run_once()
    assert stats.timeouts == 1 and rec.created() == []
    [timeout] = rec.events
    assert timeout.event == "helixflow.s3.pair.timeout"
    assert timeout.resource["prefect.resource.id"] == U1
    assert timeout.payload["expected_mate"] == R2
    assert watcher.ledger.pending() == []
    assert watcher.run_once().timeouts == 0  # reported once
    source.push(notification((R2, "b1")))  # a late mate still makes the pair
    watcher.run_once()
    assert rec.inputs() == [[U1, U2]]


def test_unpaired_single_announces_single_end(tmp_path: Path) -> None:
    config = WatchConfig(queue_url="q", ledger=tmp_path / "l", pair_timeout=10,
                         unpaired="single")
    source, rec, clock = FakeSource(), Recorder(), Clock()
    watcher = Watcher(config, source, emit=rec, clock=clock)
    source.push(notification((R2, "b1")))
    watcher.run_once()
    clock.now += 11
    watcher.run_once()
    assert [e.event for e in rec.events] == ["helixflow.s3.pair.timeout",
                                             "helixflow.s3.object.created"]
    assert rec.inputs() == [[U2]] and rec.created()[0].payload["layout"] == "single"


def test_newer_version_of_pending_mate_resets_its_wait(
        setup: tuple[Watcher, FakeSource, Recorder, Clock]) -> None:
    watcher, source, rec, clock = setup
    source.push(notification((R1, "a1")))
    watcher.run_once()
    clock.now += 500
    source.push(notification((R1, "a2")))
    watcher.run_once()
    clock.now += 200  # 700 s after a1, 200 s after a2
    assert watcher.run_once().timeouts == 0
    source.push(notification((R2, "b1")))
    watcher.run_once()
    assert rec.created()[0].payload["etag"] == "a2"


# ----------------------------------------------------------------------------- moto (in-process)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from moto import mock_aws

    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


def test_sqs_source_deletes_handled_keeps_malformed(
        aws: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="uploads")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="{definitely not json")
    sqs.send_message(QueueUrl=url, MessageBody=notification((R1, "a1"), (R2, "b1")))
    config = WatchConfig(queue_url=url, wait_time=1, visibility_timeout=0,
                         ledger=tmp_path / "l")
    rec = Recorder()
    watcher = Watcher(config, SqsSource(url, wait_time=1, visibility_timeout=0), emit=rec)
    with caplog.at_level("ERROR", logger="helixflow.app.watch"):
        stats = watcher.run(max_iterations=1)
    assert stats.messages == 2 and stats.errors == 1 and stats.announced == 1
    assert rec.inputs() == [[U1, U2]]
    bad = [r for r in caplog.records if "not JSON" in r.getMessage()]
    assert bad and "SQS message" in bad[0].getMessage()
    left = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in left] == ["{definitely not json"]


def test_polling_cursor_persists(aws: None, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="raw")
    s3.put_object(Bucket="raw", Key=R1, Body=b"@r\nA\n+\nI\n")
    s3.put_object(Bucket="raw", Key=R2, Body=b"@r\nT\n+\nI\n")
    s3.put_object(Bucket="raw", Key="runs/readme.txt", Body=b"hi")
    config = WatchConfig(bucket="raw", prefix="runs/", ledger=tmp_path / "poll.sqlite",
                         poll_interval=0)
    rec = Recorder()
    w1 = Watcher(config, emit=rec)
    assert isinstance(w1.source, PollingSource)
    stats = w1.run(until_idle=True)
    assert rec.inputs() == [[U1, U2]] and stats.ignored == 1
    assert w1.ledger.cursor("raw", "runs/")["watermark"]
    w1.close()

    w2 = Watcher(config, emit=rec)  # restart: nothing new
    assert w2.run_once().messages == 0
    s3.put_object(Bucket="raw", Key=R2, Body=b"@r\nG\n+\nI\n")  # new R2 version
    s3.put_object(Bucket="raw", Key="runs/extra.fq", Body=b"@r\nC\n+\nI\n")
    stats = w2.run(until_idle=True)
    assert stats.announced == 2
    # listing order is key order: runs/extra.fq before runs/s1_R2.fastq.gz
    assert rec.inputs()[1:] == [["s3://raw/runs/extra.fq"], [U1, U2]]
    etag = s3.head_object(Bucket="raw", Key=R2)["ETag"].strip('"')
    assert rec.created()[2].payload["mate"]["etag"] == etag  # listing ETags are unquoted
    w2.close()


def test_polling_skip_existing_baseline(aws: None, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="raw")
    s3.put_object(Bucket="raw", Key="old.fq", Body=b"x")
    config = WatchConfig(bucket="raw", ledger=tmp_path / "l", skip_existing=True)
    rec = Recorder()
    watcher = Watcher(config, emit=rec)
    assert watcher.run_once().messages == 0
    s3.put_object(Bucket="raw", Key="new.fq", Body=b"y")
    watcher.run_once()
    assert rec.inputs() == [["s3://raw/new.fq"]]


def test_missing_queue_is_a_clear_error(aws: None, tmp_path: Path) -> None:
    config = WatchConfig(queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/nope",
                         wait_time=0, ledger=tmp_path / "l")
    with pytest.raises(HelixflowError, match=r"NonExistentQueue|QueueDoesNotExist"):
        Watcher(config, emit=Recorder()).run(max_iterations=1)


def test_prefect_emitter_refuses_without_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from helixflow.app.watch import PrefectEmitter

    with temporary_settings(restore_defaults={PREFECT_API_URL}), \
            pytest.raises(HelixflowError, match="PREFECT_API_URL"):
        PrefectEmitter()


# ----------------------------------------------------------------------------- moto server


class RecordingSqsSource(SqsSource):
    """SqsSource that keeps every message body it received (to re-send them later)."""

    bodies: list[str]

    def _batch(self, message: dict[str, Any]) -> Batch:
        self.bodies.append(message["Body"])
        return super()._batch(message)


@pytest.mark.integration
def test_real_bucket_notifications_via_moto_server(moto_endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    sqs = boto3.client("sqs")
    s3.create_bucket(Bucket="uploads")
    url = connect_bucket_to_queue("uploads", "uploads-events", s3=s3, sqs=sqs)
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])[
        "Attributes"]["Policy"])
    assert policy["Statement"][0]["Condition"]["ArnLike"]["aws:SourceArn"] == (
        "arn:aws:s3:::uploads")
    k1, k2 = "runs/sample one_R1.fastq.gz", "runs/sample one_R2.fastq.gz"
    r1_body = b"@r\nACGT\n+\nIIII\n"
    s3.put_object(Bucket="uploads", Key=k1, Body=r1_body)
    s3.put_object(Bucket="uploads", Key=k2, Body=b"@r\nTTTT\n+\nIIII\n")
    s3.put_object(Bucket="uploads", Key="runs/sample one.md5", Body=b"x")

    config = WatchConfig(queue_url=url, wait_time=1, ledger=tmp_path / "it.sqlite")
    source = RecordingSqsSource(url, wait_time=1)
    source.bodies = []
    rec = Recorder()
    watcher = Watcher(config, source, emit=rec)
    stats = watcher.run(until_idle=True)

    assert stats.ignored == 2  # the s3:TestEvent and the .md5 key
    assert stats.announced == 1 and stats.errors == 0
    [spec] = rec.created()
    assert spec.payload["inputs"] == [f"s3://uploads/{k1}", f"s3://uploads/{k2}"]
    assert spec.payload["sample"] == "sample_one"
    head = s3.head_object(Bucket="uploads", Key=k1)
    assert spec.payload["etag"] == head["ETag"].strip('"') and spec.payload["size"] == len(r1_body)
    assert any("sample+one_R1.fastq.gz" in b for b in source.bodies)  # encoded on the wire
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])[
        "Attributes"] == {"ApproximateNumberOfMessages": "0",
                          "ApproximateNumberOfMessagesNotVisible": "0"}

    for body in list(source.bodies):  # the same notifications again
        sqs.send_message(QueueUrl=url, MessageBody=body)
    again = watcher.run(until_idle=True)
    assert again.announced == 0 and again.duplicates == 2 and len(rec.created()) == 1
    watcher.close()


def test_prefect_emitter_sends_and_flushes() -> None:
    """The default emitter through Prefect's real events worker (an asserting client)."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from helixflow.app.s3events import ObjectCreated, created_event
    from helixflow.app.watch import PrefectEmitter

    r1 = ObjectCreated(bucket="raw", key=R1, etag="a1", size=3)
    r2 = ObjectCreated(bucket="raw", key=R2, etag="b1", size=4)
    spec = created_event(r1, r2)
    EventsWorker.set_client_override(AssertingEventsClient)
    try:
        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            emitter = PrefectEmitter(flush_timeout=20)
            emitter(spec)
            emitter.flush()
            assert AssertingEventsClient.last is not None
            [event] = AssertingEventsClient.last.events
    finally:
        EventsWorker.drain_all(timeout=10, at_exit=False)
        EventsWorker.set_client_override(None)
        AssertingEventsClient.reset()
    assert event.id == spec.id and event.payload["inputs"] == [U1, U2]
    assert event.resource.id == U1 and event.related[0].role == "mate"
