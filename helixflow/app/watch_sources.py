"""Where the watcher's announcements come from: SQS bucket notifications, or listing a bucket.

A `Source` returns `Batch`es (what one queue message, or one newly listed object, brought)
with an `ack` that the watcher (`helixflow.app.watch`) calls once the batch is committed:
`SqsSource` deletes the message, `PollingSource` records the object's ETag in the ledger.
`connect_bucket_to_queue` sets up the AWS wiring that `SqsSource` consumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from helixflow.app.s3events import MalformedMessage, ObjectCreated, clean_etag, parse_message
from helixflow.app.watch_ledger import Ledger

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass
class Batch:
    """What one message (or one listed object) brought; `ack` once it is handled."""

    source_id: str
    records: list[ObjectCreated] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None  # unreadable: never acked
    ack: Callable[[], None] | None = None


class Source(Protocol):
    """Where announcements come from; `idle_wait` is the pause between empty fetches."""

    idle_wait: float

    def fetch(self) -> list[Batch]: ...


def _boto3_client(service: str, endpoint_url: str | None, region_name: str | None) -> Any:
    import boto3  # imported late: `helixflow --help` need not pay for it

    return boto3.client(service, endpoint_url=endpoint_url, region_name=region_name)


def connect_bucket_to_queue(bucket: str, queue: str, *, s3: Any = None, sqs: Any = None,
                            events: tuple[str, ...] = ("s3:ObjectCreated:*",)) -> str:
    """The AWS wiring `helixflow watch` consumes: the queue (created if missing) with a
    policy letting this bucket send to it, and the bucket's notification to it; the queue
    URL. Replaces the bucket's other queue notifications."""
    s3 = s3 or _boto3_client("s3", None, None)
    sqs = sqs or _boto3_client("sqs", None, None)
    queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage", "Resource": arn,
        "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}}}]}
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": list(events)}]})
    return str(queue_url)


class SqsSource:
    """S3 bucket notifications from an SQS queue (long polling, up to 10 messages)."""

    idle_wait = 0.0  # the long poll itself waits

    def __init__(self, queue_url: str, *, wait_time: int = 10,
                 visibility_timeout: int | None = None, endpoint_url: str | None = None,
                 region_name: str | None = None, client: Any = None) -> None:
        self.queue_url = queue_url
        self.wait_time = wait_time
        self.visibility_timeout = visibility_timeout
        self.client = client or _boto3_client("sqs", endpoint_url, region_name)

    def fetch(self) -> list[Batch]:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url, "MaxNumberOfMessages": 10,
            "WaitTimeSeconds": self.wait_time,
        }
        if self.visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = self.visibility_timeout
        messages = self.client.receive_message(**kwargs).get("Messages", [])
        return [self._batch(m) for m in messages]

    def _batch(self, message: dict[str, Any]) -> Batch:
        message_id = message.get("MessageId", "?")
        receipt = message["ReceiptHandle"]

        def ack() -> None:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)

        try:
            parsed = parse_message(message.get("Body", ""), message_id)
        except MalformedMessage as exc:
            return Batch(message_id, error=str(exc))
        return Batch(message_id, parsed.records, parsed.skipped, ack=ack)


class PollingSource:
    """New (key, ETag)s in a bucket/prefix by listing it, for stores without notifications.

    The cursor is in the ledger: `poll_seen` holds the last ETag handled per key (set by
    `ack` after the watcher committed) and `poll_cursor` the newest LastModified listed.
    The watermark is informational only: a multipart upload's LastModified is its start,
    so filtering on it would miss large files that took long to upload.
    """

    def __init__(self, bucket: str, ledger: Ledger, *, prefix: str = "",
                 poll_interval: float = 60.0, skip_existing: bool = False,
                 endpoint_url: str | None = None, region_name: str | None = None,
                 client: Any = None, clock: Clock = time.time) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.ledger = ledger
        self.idle_wait = poll_interval
        self.skip_existing = skip_existing
        self.clock = clock
        self.client = client or _boto3_client("s3", endpoint_url, region_name)

    def fetch(self) -> list[Batch]:
        first = self.ledger.cursor(self.bucket, self.prefix) is None
        batches: list[Batch] = []
        newest: str | None = None
        baseline: list[tuple[str, str, str]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                key, etag = item["Key"], clean_etag(item.get("ETag"))
                modified = item.get("LastModified")
                stamp = modified.isoformat() if modified is not None else None
                if stamp and (newest is None or stamp > newest):
                    newest = stamp
                if self.ledger.poll_seen(self.bucket, key) == etag:
                    continue
                if first and self.skip_existing:
                    baseline.append((key, etag, stamp or ""))
                    continue
                record = ObjectCreated(bucket=self.bucket, key=key, etag=etag,
                                       size=int(item.get("Size", 0)), event_time=stamp,
                                       event_name="ObjectCreated:Listed")
                batches.append(Batch(f"s3://{self.bucket}/{key}#{etag}", [record],
                                     ack=self._marker(key, etag, stamp)))
        with self.ledger.transaction():
            for key, etag, stamp in baseline:
                self.ledger.mark_polled(self.bucket, key, etag, stamp or None)
            self.ledger.set_cursor(self.bucket, self.prefix, newest, self.clock())
        if baseline:
            log.info("first listing of s3://%s/%s: %d existing objects recorded, not announced",
                     self.bucket, self.prefix, len(baseline))
        return batches

    def _marker(self, key: str, etag: str, stamp: str | None) -> Callable[[], None]:
        def ack() -> None:
            with self.ledger.transaction():
                self.ledger.mark_polled(self.bucket, key, etag, stamp)

        return ack

