"""S3 upload notifications, as pure functions: parse, filter, pair R1/R2, name the event.

No network and no state here (that lives in `helixflow.app.watch`), so every rule about what an
S3 notification means is testable on plain strings.

Shapes understood by `parse_message`:

* an S3 event notification (`{"Records": [{"eventName": "ObjectCreated:Put", "s3": ...}]}`),
  as S3 sends it to SQS directly; object keys in it are URL-encoded (`unquote_plus`),
* the same wrapped by SNS (`{"Type": "Notification", "Message": "<json>"}`),
* an EventBridge `Object Created` event (keys there are used as sent: moto sends them raw),
* `s3:TestEvent`, which S3 sends when a notification is configured: no records.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Literal
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict

from helixflow.errors import HelixflowError
from helixflow.samples import _mate_match, sample_name
from helixflow.uris import uri_name

DEFAULT_PATTERNS: tuple[str, ...] = ("*.fastq.gz", "*.fq.gz", "*.fastq", "*.fq")
OBJECT_CREATED = "helixflow.s3.object.created"
PAIR_TIMEOUT = "helixflow.s3.pair.timeout"

# Fixed namespace: event ids must be the same on every machine and every run.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://helixflow.dev/events/s3")

Role = Literal["R1", "R2", "single"]


class MalformedMessage(HelixflowError):
    """A queue message that is not an S3 notification we can read; names the message."""

    def __init__(self, message_id: str, problem: str) -> None:
        super().__init__(
            f"SQS message {message_id}: {problem}",
            hint="the message stays on the queue; its redrive policy moves it to a dead-letter "
            "queue after maxReceiveCount receives",
        )
        self.message_id = message_id
        self.problem = problem


class ObjectCreated(BaseModel):
    """One new S3 object version (key already URL-decoded, ETag without quotes)."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    etag: str
    size: int = 0
    sequencer: str | None = None
    event_time: str | None = None
    event_name: str = "ObjectCreated:Put"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass
class ParsedMessage:
    """What one queue message announced: object records, and why anything was dropped."""

    records: list[ObjectCreated] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def clean_etag(etag: str | None) -> str:
    """ETags arrive quoted from list/head calls (`"abc"`) and bare in notifications."""
    return (etag or "").strip().strip('"')


def parse_message(body: str | bytes, message_id: str = "?") -> ParsedMessage:
    """Read an SQS message body into `ObjectCreated` records.

    Raises `MalformedMessage` (naming `message_id`) for bodies that are not JSON or not a
    notification shape we know, so the caller can leave them for the redrive policy.

    Example:
        >>> body = '{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}'
        >>> parse_message(body, "m-1").skipped
        ['s3:TestEvent for bucket b']
    """
    doc = _loads(body, message_id)
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
        doc = _loads(doc["Message"], message_id, what="SNS Message")  # SNS envelope
    if not isinstance(doc, dict):
        raise MalformedMessage(message_id, f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("Event") == "s3:TestEvent":
        return ParsedMessage(skipped=[f"s3:TestEvent for bucket {doc.get('Bucket', '?')}"])
    if "detail-type" in doc and "detail" in doc:
        return _parse_eventbridge(doc, message_id)
    if "Records" in doc:
        return _parse_records(doc["Records"], message_id)
    raise MalformedMessage(message_id, f"not an S3 notification (keys: {sorted(doc)[:8]})")


def _loads(text: Any, message_id: str, what: str = "body") -> Any:
    if not isinstance(text, str | bytes):
        raise MalformedMessage(message_id, f"{what} is not text")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise MalformedMessage(message_id, f"{what} is not JSON ({exc})") from None


def _parse_records(records: Any, message_id: str) -> ParsedMessage:
    if not isinstance(records, list):
        raise MalformedMessage(message_id, "'Records' is not a list")
    out = ParsedMessage()
    for i, rec in enumerate(records):
        try:
            name = str(rec.get("eventName", ""))
            s3 = rec["s3"]
            bucket = s3["bucket"]["name"]
            obj = s3["object"]
            key = unquote_plus(obj["key"])
        except (AttributeError, KeyError, TypeError) as exc:
            raise MalformedMessage(message_id, f"record {i + 1} lacks {exc}") from None
        name = name.removeprefix("s3:")
        if not name.startswith("ObjectCreated:"):
            out.skipped.append(f"{name or 'unnamed event'} for s3://{bucket}/{key}")
            continue
        out.records.append(ObjectCreated(
            bucket=bucket, key=key, etag=clean_etag(obj.get("eTag") or obj.get("etag")),
            size=int(obj.get("size") or 0), sequencer=obj.get("sequencer"),
            event_time=rec.get("eventTime"), event_name=name,
        ))
    return out


def _parse_eventbridge(doc: dict[str, Any], message_id: str) -> ParsedMessage:
    kind = doc.get("detail-type")
    detail = doc.get("detail") or {}
    try:
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = obj["key"]
    except (KeyError, TypeError) as exc:
        raise MalformedMessage(message_id, f"EventBridge event lacks {exc}") from None
    if kind != "Object Created":
        return ParsedMessage(skipped=[f"{kind} for s3://{bucket}/{key}"])
    time = doc.get("time")
    return ParsedMessage(records=[ObjectCreated(
        bucket=bucket, key=key, etag=clean_etag(obj.get("etag") or obj.get("eTag")),
        size=int(obj.get("size") or 0), sequencer=obj.get("sequencer"),
        event_time=None if time is None else str(time),
        event_name=f"ObjectCreated:{detail.get('reason', 'PutObject')}",
    )])


def key_matches(key: str, patterns: Iterable[str] = DEFAULT_PATTERNS, prefix: str = "") -> bool:
    """Is `key` under `prefix` and matched by a glob, on the whole key or its file name?

    Matching ignores case (`X_R1.FASTQ.GZ` is a FASTQ too).

    Example:
        >>> key_matches("runs/a_R1.fastq.gz"), key_matches("runs/a.bam")
        (True, False)
        >>> key_matches("other/a.fq", prefix="runs/")
        False
    """
    if prefix and not key.startswith(prefix):
        return False
    lower, base = key.lower(), uri_name(key).lower()
    return any(fnmatchcase(lower, p.lower()) or fnmatchcase(base, p.lower()) for p in patterns)


@dataclass(frozen=True)
class Mate:
    """A key's place in a pair: `role`, the key its partner must have, the sample name."""

    role: Role
    mate_key: str | None
    sample: str


def mate_of(key: str) -> Mate:
    """R1, R2 or single for a key, by the same naming rules as `helixflow.samples`.

    Example:
        >>> mate_of("runs/s1_R1_001.fastq.gz")
        Mate(role='R1', mate_key='runs/s1_R2_001.fastq.gz', sample='s1')
        >>> mate_of("runs/demo/R2.fq").mate_key
        'runs/demo/R1.fq'
    """
    sample = sample_name(key)
    match = _mate_match(key)
    if match is None:
        return Mate("single", None, sample)
    base = uri_name(key)
    other = "2" if match.group("mate") == "1" else "1"
    tail = match.group("tag") + other + match.group("rest")
    if base == match.string:  # `stem_R1.fq`: the match is on the file name itself
        mate_base = match.group("stem") + match.group("sep") + tail
    else:  # a bare `R1.fq` matched as `<folder>_R1.fq`
        mate_base = tail
    role: Role = "R1" if match.group("mate") == "1" else "R2"
    return Mate(role, key[: len(key) - len(base)] + mate_base, sample)


def announcement_id(objects: Sequence[ObjectCreated]) -> uuid.UUID:
    """The event id for announcing these object versions (R1 first): same input, same id.

    Prefect's trigger service drops events whose id it has already seen, so a crash between
    emitting and recording an announcement cannot start a second run.
    """
    text = "\n".join(f"{o.bucket}\0{o.key}\0{o.etag}" for o in objects)
    return uuid.uuid5(_NAMESPACE, text)


@dataclass(frozen=True)
class EventSpec:
    """Everything `prefect.events.emit_event` needs, built without touching Prefect."""

    event: str
    resource: dict[str, str]
    related: list[dict[str, str]]
    payload: dict[str, Any]
    id: uuid.UUID
    occurred: datetime | None = None


def _resource(obj: ObjectCreated, role: str | None = None) -> dict[str, str]:
    res = {
        "prefect.resource.id": obj.uri,
        "prefect.resource.name": uri_name(obj.key),
        "helixflow.etag": obj.etag,
    }
    if role is not None:
        res["prefect.resource.role"] = role
    return res


def _describe(obj: ObjectCreated) -> dict[str, Any]:
    return {"key": obj.key, "etag": obj.etag, "size": obj.size, "uri": obj.uri}


def created_event(r1: ObjectCreated, r2: ObjectCreated | None = None,
                  sample: str | None = None) -> EventSpec:
    """`helixflow.s3.object.created` for a single object or an R1/R2 pair.

    The payload carries what a deployment trigger templates into flow parameters:
    `inputs` (s3 URIs, R1 first) and `sample`.
    """
    payload: dict[str, Any] = {
        "inputs": [r1.uri] if r2 is None else [r1.uri, r2.uri],
        "sample": sample or mate_of(r1.key).sample,
        "layout": "single" if r2 is None else "paired",
        "bucket": r1.bucket, "key": r1.key, "uri": r1.uri, "etag": r1.etag, "size": r1.size,
    }
    if r1.sequencer:
        payload["sequencer"] = r1.sequencer
    if r1.event_time:
        payload["event_time"] = r1.event_time
    related: list[dict[str, str]] = []
    if r2 is not None:
        payload["mate"] = _describe(r2) | ({"sequencer": r2.sequencer} if r2.sequencer else {})
        related.append(_resource(r2, role="mate"))
    objects = [r1] if r2 is None else [r1, r2]
    return EventSpec(OBJECT_CREATED, _resource(r1), related, payload, announcement_id(objects))


def timeout_event(obj: ObjectCreated, mate_key: str, waited: float) -> EventSpec:
    """`helixflow.s3.pair.timeout`: `obj` waited `waited` seconds for `mate_key` in vain."""
    payload = _describe(obj) | {
        "bucket": obj.bucket, "expected_mate": mate_key, "waited_seconds": round(waited, 1),
        "sample": mate_of(obj.key).sample,
    }
    event_id = uuid.uuid5(_NAMESPACE, f"timeout\n{obj.bucket}\0{obj.key}\0{obj.etag}")
    return EventSpec(PAIR_TIMEOUT, _resource(obj), [], payload, event_id)


def _sequencer_key(sequencer: str) -> str:
    # AWS: compare sequencers as hex strings after left-padding the shorter one with zeros.
    return sequencer.upper().rjust(64, "0")


def is_older(new: str | None, known: str | None) -> bool:
    """True when both sequencers are known and `new` is an earlier event than `known`."""
    if not new or not known or not re.fullmatch(r"[0-9A-Fa-f]+", new + known):
        return False
    return _sequencer_key(new) < _sequencer_key(known)
