"""Watch S3 for new FASTQ uploads and announce each once as a Prefect event.

`Watcher` pulls batches from a source (`SqsSource`: S3 bucket notifications delivered to
SQS; `PollingSource`: list_objects_v2 for stores without notifications), pairs R1/R2 mates,
and emits `helixflow.s3.object.created` once per (bucket, key, ETag) -- or once per pair of
mate versions. State lives in a SQLite `Ledger` so a restart neither forgets pending mates
nor re-announces.

Crash safety (the order of operations for each queue message or listed object):

1. `BEGIN IMMEDIATE` on the ledger,
2. decide and emit the events (`emit` only queues them in Prefect's events worker),
3. flush: wait until Prefect's events worker has sent them over its websocket,
4. `COMMIT` (the announcement is recorded),
5. acknowledge the source (delete the SQS message / mark the listed object seen).

A crash after 3 and before 4 re-emits on redelivery, but with the same deterministic event
id (`helixflow.app.s3events.announcement_id`), and Prefect's trigger service drops event ids it
has already seen, so no second run starts. A failure before 3 rolls back, and the message
comes back after its visibility timeout.

The ledger is `helixflow.app.watch_ledger`, the sources `helixflow.app.watch_sources`; this
module holds the configuration, the Prefect emitter and the watcher itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from helixflow.app.s3events import (
    DEFAULT_PATTERNS,
    EventSpec,
    ObjectCreated,
    created_event,
    is_older,
    key_matches,
    mate_of,
    timeout_event,
)
from helixflow.app.watch_ledger import Ledger
from helixflow.app.watch_sources import Batch, Clock, PollingSource, Source, SqsSource
from helixflow.errors import HelixflowError
from helixflow.settings import helixflow_home

log = logging.getLogger(__name__)

# Errors that no amount of waiting fixes: stop the watcher with a clear message instead.
_FATAL_CODES = {
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NoSuchBucket",
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "InvalidAccessKeyId", "ExpiredToken",
}


class EmitError(HelixflowError):
    """Events could not be handed to Prefect; nothing was recorded, the source will retry."""


class WatchConfig(BaseModel):
    """What to watch and how; either `queue_url` (SQS) or `bucket` (polling)."""

    name: str = "default"
    queue_url: str | None = None
    bucket: str | None = None
    prefix: str = ""
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS))
    pair_timeout: float = 3600.0
    unpaired: Literal["skip", "single"] = "skip"
    poll_interval: float = 60.0
    wait_time: int = Field(10, ge=0, le=20)  # SQS long poll; AWS allows at most 20 s
    visibility_timeout: int | None = None  # SQS; None keeps the queue's own
    skip_existing: bool = False  # polling: the first listing is a baseline, not announced
    endpoint_url: str | None = None  # None: boto3 honours AWS_ENDPOINT_URL itself
    region_name: str | None = None
    ledger: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> WatchConfig:
        if not self.queue_url and not self.bucket:
            raise ValueError("give a queue_url (SQS notifications) or a bucket (polling)")
        if not self.patterns:
            raise ValueError("patterns is empty: nothing would ever match")
        return self

    @property
    def mode(self) -> Literal["sqs", "poll"]:
        return "sqs" if self.queue_url else "poll"

    @property
    def ledger_path(self) -> Path:
        """`ledger`, default `$HELIXFLOW_HOME/watch/<name>.sqlite`."""
        return self.ledger or helixflow_home() / "watch" / f"{self.name}.sqlite"


@dataclass
class WatchStats:
    """Counts for one `run_once` (or, summed, for a whole `run`)."""

    messages: int = 0  # SQS messages or listed objects received
    records: int = 0  # ObjectCreated records among them
    announced: int = 0  # helixflow.s3.object.created events emitted
    duplicates: int = 0  # already-announced object versions
    ignored: int = 0  # test events, other event types, keys not matching
    pending: int = 0  # lone mates stored to wait for their partner
    timeouts: int = 0  # lone mates given up on
    errors: int = 0  # messages left on the queue (unparseable, or emit failed)

    def __iadd__(self, other: WatchStats) -> WatchStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self



def source_for(config: WatchConfig, ledger: Ledger, clock: Clock = time.time) -> Source:
    """The source `config` names: its SQS queue, or a listing of its bucket/prefix."""
    if config.mode == "sqs":
        assert config.queue_url
        return SqsSource(config.queue_url, wait_time=config.wait_time,
                         visibility_timeout=config.visibility_timeout,
                         endpoint_url=config.endpoint_url, region_name=config.region_name)
    assert config.bucket
    return PollingSource(config.bucket, ledger, prefix=config.prefix,
                         poll_interval=config.poll_interval, skip_existing=config.skip_existing,
                         endpoint_url=config.endpoint_url, region_name=config.region_name,
                         clock=clock)


# --------------------------------------------------------------------------- emitting

Emit = Callable[[EventSpec], None]


class PrefectEmitter:
    """Sends `EventSpec`s with `prefect.events.emit_event`; `flush` waits until sent.

    Refuses to start without `PREFECT_API_URL`: Prefect would otherwise start a throwaway
    ephemeral server and the events would go nowhere useful.
    """

    def __init__(self, flush_timeout: float = 30.0) -> None:
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:
            raise HelixflowError(
                "no Prefect API to send events to (PREFECT_API_URL is not set)",
                hint="start one with `helixflow server start`, or set PREFECT_API_URL",
            )
        self.flush_timeout = flush_timeout

    def __call__(self, spec: EventSpec) -> None:
        from prefect.events import emit_event

        sent = emit_event(event=spec.event, resource=spec.resource, related=spec.related,
                          payload=spec.payload, id=spec.id, occurred=spec.occurred)
        if sent is None:
            raise EmitError(f"Prefect did not accept event {spec.event} {spec.id}")

    def flush(self) -> None:
        """Wait until Prefect's events worker has sent everything queued so far.

        `emit_event` only queues; the worker sends over a websocket from a background
        thread. `wait_until_empty` has no timeout, so it runs in a helper thread.
        """
        from prefect.events.worker import EventsWorker

        waiter = threading.Thread(target=EventsWorker.instance().wait_until_empty,
                                  name="helixflow-watch-flush", daemon=True)
        waiter.start()
        waiter.join(self.flush_timeout)
        if waiter.is_alive():
            raise EmitError(f"Prefect events not sent within {self.flush_timeout:.0f} s")


# --------------------------------------------------------------------------- watcher


class Watcher:
    """Turns source batches into exactly-once announcements, pairing R1/R2 uploads.

    `emit` receives each `EventSpec`; if it has a `flush()` method, that is called before
    each commit. `clock` (seconds, like `time.time`) is injectable for timeout tests.
    """

    def __init__(self, config: WatchConfig, source: Source | None = None, *,
                 emit: Emit | None = None, ledger: Ledger | None = None,
                 clock: Clock = time.time) -> None:
        self.config = config
        self.clock = clock
        self.ledger = ledger or Ledger(config.ledger_path)
        self.source = source or source_for(config, self.ledger, clock)
        self.emit: Emit = emit or PrefectEmitter()
        self._flush: Callable[[], None] | None = getattr(self.emit, "flush", None)

    def close(self) -> None:
        self.ledger.close()

    # one iteration
    def run_once(self) -> WatchStats:
        """Fetch one batch from the source, handle it, then give up on overdue mates."""
        stats = WatchStats()
        for batch in self.source.fetch():
            stats.messages += 1
            self._handle_batch(batch, stats)
        self.expire_pending(stats)
        return stats

    def run(self, stop: threading.Event | None = None, max_iterations: int | None = None,
            *, until_idle: bool = False) -> WatchStats:
        """Loop `run_once` until `stop` is set, `max_iterations`, or (`until_idle`) a fetch
        brings nothing. AWS errors that waiting cannot fix raise `HelixflowError`; others
        are logged and retried after the source's idle wait (at least 5 s)."""
        from botocore.exceptions import BotoCoreError, ClientError

        stop = stop or threading.Event()
        total = WatchStats()
        iterations = 0
        while not stop.is_set() and (max_iterations is None or iterations < max_iterations):
            iterations += 1
            try:
                stats = self.run_once()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in _FATAL_CODES:
                    raise HelixflowError(f"watching {self._where()}: {code}: {exc}",
                                         hint="check the queue/bucket name, region and "
                                         "credentials") from exc
                log.error("watching %s: %s; trying again", self._where(), exc)
                stop.wait(max(self.source.idle_wait, 5.0))
                continue
            except BotoCoreError as exc:
                log.error("watching %s: %s; trying again", self._where(), exc)
                stop.wait(max(self.source.idle_wait, 5.0))
                continue
            total += stats
            if stats.messages == 0:
                if until_idle:
                    break
                stop.wait(self.source.idle_wait)
        return total

    def _where(self) -> str:
        c = self.config
        return c.queue_url or f"s3://{c.bucket}/{c.prefix}"

    # handling
    def _handle_batch(self, batch: Batch, stats: WatchStats) -> None:
        if batch.error is not None:
            log.error("%s (left on the queue for its redrive policy)", batch.error)
            stats.errors += 1
            return
        for reason in batch.skipped:
            log.info("ignored %s (message %s)", reason, batch.source_id)
        stats.ignored += len(batch.skipped)
        part = WatchStats()
        try:
            with self.ledger.transaction():
                for record in batch.records:
                    part.records += 1
                    self._handle(record, part)
                if part.announced or part.timeouts:
                    self._flush_events()
        except Exception as exc:
            log.error("message %s not handled, it will be delivered again: %s",
                      batch.source_id, exc, exc_info=not isinstance(exc, HelixflowError))
            stats.errors += 1
            return
        stats += part
        if batch.ack is not None:
            batch.ack()

    def _flush_events(self) -> None:
        if self._flush is not None:
            self._flush()

    def _handle(self, obj: ObjectCreated, stats: WatchStats) -> None:
        c = self.config
        if c.mode == "sqs" and c.bucket and obj.bucket != c.bucket:
            log.info("ignored %s: not in bucket %s", obj.uri, c.bucket)
            stats.ignored += 1
            return
        if not key_matches(obj.key, c.patterns, c.prefix):
            log.debug("ignored %s: key does not match %s under %r", obj.uri, c.patterns,
                      c.prefix)
            stats.ignored += 1
            return
        if self.ledger.is_announced(obj.bucket, obj.key, obj.etag):
            log.info("already announced %s (ETag %s): no new run", obj.uri, obj.etag)
            stats.duplicates += 1
            return
        known = self.ledger.latest(obj.bucket, obj.key)
        if known is not None and known.etag != obj.etag and is_older(obj.sequencer,
                                                                     known.sequencer):
            log.info("ignored %s (ETag %s): older than the known version (ETag %s)",
                     obj.uri, obj.etag, known.etag)
            stats.ignored += 1
            return
        now = self.clock()
        self.ledger.set_latest(obj, now)
        mate = mate_of(obj.key)
        if mate.role == "single" or mate.mate_key is None:
            self._announce(obj, None, mate.sample, stats)
            return
        partner = self.ledger.latest(obj.bucket, mate.mate_key)
        if partner is None:
            if self.ledger.pending_etag(obj.bucket, obj.key) != obj.etag:
                self.ledger.add_pending(obj, mate.mate_key, now)
                log.info("%s waits for its mate %s (up to %.0f s)", obj.uri, mate.mate_key,
                         c.pair_timeout)
            stats.pending += 1
            return
        r1, r2 = (obj, partner) if mate.role == "R1" else (partner, obj)
        self.ledger.drop_pending(obj.bucket, obj.key)
        self.ledger.drop_pending(obj.bucket, mate.mate_key)
        self._announce(r1, r2, mate.sample, stats)

    def _announce(self, r1: ObjectCreated, r2: ObjectCreated | None, sample: str,
                  stats: WatchStats) -> None:
        spec = created_event(r1, r2, sample)
        event_id = str(spec.id)
        if self.ledger.has_event(event_id):
            log.info("already announced %s as event %s: no new run", spec.payload["inputs"],
                     event_id)
            stats.duplicates += 1
            return
        self.emit(spec)
        objects = [("single", r1)] if r2 is None else [("R1", r1), ("R2", r2)]
        self.ledger.record_announcement(event_id, sample, objects, self.clock())
        log.info("announced %s as sample %s (event %s)", spec.payload["inputs"], sample,
                 event_id)
        stats.announced += 1

    def expire_pending(self, stats: WatchStats | None = None) -> int:
        """Give up on lone mates older than `pair_timeout`: warn and emit
        `helixflow.s3.pair.timeout`; with `unpaired="single"` announce them single-end."""
        stats = stats if stats is not None else WatchStats()
        now = self.clock()
        expired = 0
        for row in self.ledger.pending():
            waited = now - row["arrived_at"]
            if waited < self.config.pair_timeout:
                continue
            obj = self.ledger.latest(row["bucket"], row["key"])
            if obj is None or obj.etag != row["etag"]:  # superseded: nothing to report
                with self.ledger.transaction():
                    self.ledger.drop_pending(row["bucket"], row["key"])
                continue
            part = WatchStats()
            try:
                with self.ledger.transaction():
                    log.warning("%s: mate %s did not arrive within %.0f s; %s", obj.uri,
                                row["mate_key"], self.config.pair_timeout,
                                "announcing it single-end" if self.config.unpaired == "single"
                                else "no run started")
                    self.emit(timeout_event(obj, row["mate_key"], waited))
                    part.timeouts += 1
                    if self.config.unpaired == "single":
                        self._announce(obj, None, mate_of(obj.key).sample, part)
                    self.ledger.drop_pending(row["bucket"], row["key"])
                    self._flush_events()
            except Exception as exc:
                log.error("timing out %s failed, will retry: %s", obj.uri, exc,
                          exc_info=not isinstance(exc, HelixflowError))
                stats.errors += 1
                continue
            stats += part
            expired += 1
        return expired


def open_watcher(config: WatchConfig, *, emit: Emit | None = None,
                 clock: Clock = time.time) -> Watcher:
    """The watcher the CLI runs: source from `config` (SQS or polling), Prefect emitter."""
    return Watcher(config, emit=emit, clock=clock)
