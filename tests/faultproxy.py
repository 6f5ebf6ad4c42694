"""A fault-injecting HTTP proxy for S3 tests: it stands in front of the moto server and,
deterministically, answers some requests `503 SlowDown`, resets some connections, and
denies chosen buckets with `403 AccessDenied` — what S3 and the network do in production.

Faults are injected before the request reaches moto, so a faulted request changes
nothing there (as a throttling front end or a dropped connection would). Each request
is logged with botocore's attempt number (`amz-sdk-request: attempt=N`), so a test can
tell which layer retried: botocore (attempt > 1, same invocation id) or a layer above it
(s3fs, Prefect: a new invocation after one that ended in a fault).
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlparse

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-connection",
                         "te", "trailer", "transfer-encoding", "upgrade", "expect"})

_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
              "<Message>{message}</Message><Resource>{resource}</Resource>"
              "<RequestId>fault-{n}</RequestId></Error>")


@dataclass
class Seen:
    """One request as the proxy saw it."""

    n: int
    method: str
    path: str
    invocation: str | None
    attempt: int
    fault: str | None  # "slowdown", "reset", "denied" or None (forwarded)


@dataclass
class FaultPlan:
    """Which requests fail. Every `slowdown_every`-th request gets 503 SlowDown, every
    `reset_every`-th a TCP reset (0 = never), up to `max_faults` in all; requests whose
    path `deny` matches get 403 AccessDenied every time."""

    slowdown_every: int = 0
    reset_every: int = 0
    max_faults: int = 1_000
    deny: Callable[[str, str], bool] = field(default=lambda method, path: False)


class FaultProxy:
    """A threaded stdlib HTTP proxy to `upstream`, injecting the faults of `plan`.

    Example:
        >>> plan = FaultPlan(slowdown_every=7, reset_every=11)
        >>> with FaultProxy("http://127.0.0.1:5000", plan) as proxy:  # doctest: +SKIP
        ...     s3 = boto3.client("s3", endpoint_url=proxy.url)
    """

    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.plan = plan
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._faults = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- what happened ------------------------------------------------------------------

    def count(self, fault: str | None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if s.fault == fault)

    def botocore_retries(self) -> int:
        """Requests that were botocore's own retries (attempt > 1)."""
        with self._lock:
            return sum(1 for s in self.seen if s.attempt > 1)

    def given_up_by_botocore(self) -> int:
        """Invocations whose last attempt was a fault: a layer above botocore had to retry."""
        last: dict[str, Seen] = {}
        with self._lock:
            for s in self.seen:
                if s.invocation:
                    last[s.invocation] = s
        return sum(1 for s in last.values() if s.fault in ("slowdown", "reset"))

    # -- the decision -------------------------------------------------------------------

    def _decide(self, method: str, path: str, headers: http.client.HTTPMessage) -> Seen:
        attempt = re.search(r"attempt=(\d+)", headers.get("amz-sdk-request", ""))
        with self._lock:
            n = len(self.seen) + 1
            fault = None
            plan = self.plan
            if plan.deny(method, path):
                fault = "denied"
            elif self._faults < plan.max_faults:
                if plan.reset_every and n % plan.reset_every == 0:
                    fault = "reset"
                elif plan.slowdown_every and n % plan.slowdown_every == 0:
                    fault = "slowdown"
                if fault:
                    self._faults += 1
            seen = Seen(n, method, path, headers.get("amz-sdk-invocation-id"),
                        int(attempt.group(1)) if attempt else 1, fault)
            self.seen.append(seen)
            return seen

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # every request is recorded in proxy.seen instead

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response_only(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str, message: str, n: int) -> None:
                body = _ERROR_XML.format(code=code, message=message, resource=self.path,
                                         n=n).encode()
                self._reply(status, [("Content-Type", "application/xml"),
                                     ("Content-Length", str(len(body)))], body)

            def _reset(self) -> None:
                """Close the connection with a TCP RST, no response."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    out = [(k, v) for k, v in response.getheaders()
                           if k.lower() not in _HOP_BY_HOP
                           and (k.lower() != "content-length" or self.command == "HEAD")]
                    if self.command != "HEAD":
                        out.append(("Content-Length", str(len(data))))
                    self._reply(response.status, out, data)
                finally:
                    conn.close()

            def _handle(self) -> None:
                body = self._body()
                seen = proxy._decide(self.command, self.path, self.headers)
                if seen.fault == "reset":
                    self._reset()
                elif seen.fault == "slowdown":
                    self._error(503, "SlowDown", "Please reduce your request rate.", seen.n)
                elif seen.fault == "denied":
                    self._error(403, "AccessDenied", "Access Denied", seen.n)
                else:
                    self._forward(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
