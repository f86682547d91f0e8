"""A loopback HTTP proxy in front of moto's S3 server that fails requests on purpose.

Clients (s3fs/botocore in the test process and in Ray workers) use the proxy's URL as their
``endpoint_url``; the proxy forwards every request to moto unless a fault rule says otherwise:

- ``503``: answered ``503 SlowDown`` with S3's XML error body (what S3 says when throttling
  or briefly unavailable); the request never reaches moto;
- ``reset``: the request is read, then the connection is reset (RST) without an answer; the
  request never reaches moto;
- ``reset_after``: the request is forwarded (moto applies it), then the connection is reset
  before the answer: the client cannot know whether its write happened;
- ``refuse``: while the outage lasts the listening socket is closed (new connections are
  refused) and requests on open keep-alive connections are reset.

Rules are random (``rate``) or full outages over a time window (``outage(seconds)``), and can
be limited to some methods (``methods={"PUT"}``) or to object paths containing a string
(``path_contains="/_manifest/"``: the driver's manifest writes). An outage can also be armed to
start at the first request that matches a trigger (e.g. the first manifest part written), so
that it begins mid-job without the test polling.

Every request is logged (time, method, path, outcome) so tests can assert that faults really
happened and that clients kept working through them. Only standard library; 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

KINDS = ("503", "reset", "reset_after", "refuse")

_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>FAULTPROXY</RequestId><HostId>fault-proxy</HostId></Error>"
)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}


@dataclass(frozen=True)
class Request:
    """What a rule sees of a request: the method, the unquoted path (``/bucket/key``; no
    query) and the raw query string."""

    method: str
    path: str
    query: str


@dataclass
class Rule:
    """Fail a fraction ``rate`` of the matching requests with ``kind``.

    ``start``/``until``: time.monotonic() window (None: open-ended); ``trigger``: the rule is
    dormant until a request matches it, then runs for ``duration`` seconds from that moment.
    """

    kind: str
    rate: float = 1.0
    methods: frozenset[str] | None = None
    path_contains: str | None = None
    start: float | None = None
    until: float | None = None
    trigger: Callable[[Request], bool] | None = None
    duration: float | None = None
    name: str = ""
    every: int | None = None  # instead of ``rate``: fail every n-th matching request
    triggered_at: float | None = None
    injected: int = 0
    seen: int = 0  # matching requests while active

    def matches(self, req: Request) -> bool:
        if self.methods is not None and req.method not in self.methods:
            return False
        return self.path_contains is None or self.path_contains in req.path

    def active(self, now: float) -> bool:
        if self.trigger is not None and self.triggered_at is None:
            return False
        return (self.start is None or now >= self.start) and (
            self.until is None or now < self.until
        )


@dataclass
class LogEntry:
    t: float  # time.monotonic()
    method: str
    path: str
    query: str
    outcome: str  # "forwarded" | one of KINDS | "upstream_error"
    status: int | None = None  # the status sent back, when one was
    rule: str = ""


class _Reset(Exception):
    pass


def _reset(conn: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not an orderly FIN."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


class S3FaultProxy:
    """``S3FaultProxy(upstream).start()``; ``.url`` is the endpoint clients use."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0, seed: int = 0):
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only forwards to loopback, not {upstream}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.host, self.port = host, port
        self.rules: list[Rule] = []
        self.log: list[LogEntry] = []
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._refusing_until: float | None = None
        self.refusals = 0  # times the listening socket was closed by a ``refuse`` outage
        self._local = threading.local()

    # --------------------------------------------------------------------------- lifecycle
    def start(self) -> S3FaultProxy:
        self._listen()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, daemon=True, name="s3-fault-proxy"
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._listener is not None:
                self._close_listener()
            for c in list(self._conns):
                _reset(c)
        if self._accept_thread is not None:
            self._accept_thread.join(5)

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def storage_options(self, **extra) -> dict:
        """s3fs options for the proxy (moto's fake credentials).

        botocore's own retries are off (one attempt, standard mode) and its timeouts short, so
        that only s3fs's few quick retries (~2 s in all) sit between a fault and the pipeline:
        a longer outage must be ridden out by the pipeline's own retries (``io_retry_s``), not
        hidden by botocore's legacy backoff (up to 5 attempts, several seconds each).
        ``extra`` overrides."""
        options = {
            "endpoint_url": self.url,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "eu-west-1"},
            "config_kwargs": {
                "retries": {"max_attempts": 1, "mode": "standard"},
                "connect_timeout": 5,
                "read_timeout": 30,
            },
        }
        options.update(extra)
        return options

    # ------------------------------------------------------------------------------- rules
    def add_rule(
        self,
        kind: str,
        rate: float = 1.0,
        *,
        methods: Iterable[str] | None = None,
        path_contains: str | None = None,
        seconds: float | None = None,
        start_in: float = 0.0,
        trigger: Callable[[Request], bool] | None = None,
        every: int | None = None,
        name: str = "",
    ) -> Rule:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}; one of {KINDS}")
        if kind == "refuse" and (methods is not None or path_contains is not None or rate < 1):
            raise ValueError("refuse closes the listening socket: it cannot be selective")
        now = time.monotonic()
        rule = Rule(
            kind,
            rate,
            frozenset(m.upper() for m in methods) if methods else None,
            path_contains,
            name=name or kind,
            every=every,
        )
        if trigger is not None:
            rule.trigger, rule.duration = trigger, seconds
        else:
            rule.start = now + start_in
            rule.until = None if seconds is None else rule.start + seconds
        with self._lock:
            self.rules.append(rule)
            if kind == "refuse" and trigger is None:
                self._schedule_refuse(rule)
        return rule

    def every(self, n: int, kind: str = "503", **match) -> Rule:
        """Fail every ``n``-th matching request (deterministic: a test can count on faults
        hitting, say, every third PUT)."""
        return self.add_rule(kind, every=n, name=f"every-{n}-{kind}", **match)

    def faults(self, rate_503: float = 0.0, rate_reset: float = 0.0, **match) -> list[Rule]:
        """Steady random faults, e.g. ``faults(rate_503=0.15, rate_reset=0.03)``."""
        out = []
        if rate_503:
            out.append(self.add_rule("503", rate_503, name="random-503", **match))
        if rate_reset:
            # a reset rule sees only what the 503 rule let through: scale it to stay a fraction
            # of all requests
            rate = min(1.0, rate_reset / max(1e-9, 1 - rate_503))
            out.append(self.add_rule("reset", rate, name="random-reset", **match))
        return out

    def outage(
        self,
        seconds: float | None,
        kind: str = "503",
        *,
        start_in: float = 0.0,
        after: Callable[[Request], bool] | None = None,
        **match,
    ) -> Rule:
        """Every matching request fails for ``seconds`` (None: until cleared), from now, or
        from ``start_in`` seconds on, or from the first request for which ``after`` is true
        (that request itself is forwarded)."""
        return self.add_rule(
            kind,
            1.0,
            seconds=seconds,
            start_in=start_in,
            trigger=after,
            name=f"outage-{kind}",
            **match,
        )

    def clear(self) -> None:
        """No more faults (also ends a refusing outage now)."""
        with self._lock:
            self.rules.clear()
            if self._refusing_until is not None:
                self._refusing_until = None
                self._reopen()

    # ------------------------------------------------------------------------------ counts
    def count(
        self,
        outcome: str | None = None,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> int:
        return len(
            self.entries(
                outcome, method=method, path_contains=path_contains, since=since, until=until
            )
        )

    def entries(
        self,
        outcome: str | None = None,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[LogEntry]:
        with self._lock:
            log = list(self.log)
        return [
            e
            for e in log
            if (outcome is None or e.outcome == outcome)
            and (method is None or e.method == method)
            and (path_contains is None or path_contains in e.path)
            and (since is None or e.t >= since)
            and (until is None or e.t < until)
        ]

    @property
    def injected(self) -> int:
        """Requests that got a fault instead of (or after) moto's answer."""
        return sum(e.outcome in KINDS for e in self.entries())

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries():
            out[e.outcome] = out.get(e.outcome, 0) + 1
        return out

    # ------------------------------------------------------------------------------ server
    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        s.settimeout(0.2)
        self.port = s.getsockname()[1]
        self._listener = s

    def _close_listener(self) -> None:
        s, self._listener = self._listener, None
        if s is not None:
            s.close()

    def _reopen(self) -> None:
        if self._listener is None and not self._stop.is_set():
            for _ in range(50):
                try:
                    self._listen()
                    return
                except OSError:
                    time.sleep(0.1)
            raise RuntimeError(f"fault proxy: cannot listen on port {self.port} again")

    def _schedule_refuse(self, rule: Rule) -> None:
        def run():
            delay = (rule.start or time.monotonic()) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._lock:
                if rule not in self.rules:
                    return
                self._refusing_until = rule.until if rule.until is not None else float("inf")
                self._close_listener()
                self.refusals += 1
                for c in list(self._conns):  # open keep-alive connections die too
                    _reset(c)
            if rule.until is None:
                return
            time.sleep(max(0.0, rule.until - time.monotonic()))
            with self._lock:
                if self._refusing_until is not None and rule in self.rules:
                    self._refusing_until = None
                    self._reopen()

        threading.Thread(target=run, daemon=True, name="s3-fault-proxy-refuse").start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(60)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), daemon=True, name="s3-fault-proxy-conn"
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream: http.client.HTTPConnection | None = None
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                head = self._read_head(reader)
                if head is None:
                    return
                method, target, headers = head
                if headers.get("expect", "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = self._read_body(reader, headers)
                split = urlsplit(target)
                req = Request(method.upper(), unquote(split.path), split.query)
                kind, rule = self._decide(req)
                if kind in ("503", "reset", "refuse"):
                    self._play_fault(conn, req, kind, rule)  # a 503 sent, or raises _Reset
                    continue
                upstream = upstream or http.client.HTTPConnection(
                    self.upstream_host, self.upstream_port, timeout=60
                )
                status, reason, out_headers, data = self._forward_or_reset(
                    upstream, req, method, target, headers, body
                )
                if kind == "reset_after":
                    self._record(req, kind, None, rule)
                    raise _Reset
                self._record(req, "forwarded", status, None)
                if method.upper() == "HEAD":
                    data_out = b""
                else:
                    data_out = data
                conn.sendall(
                    self._response(
                        status,
                        reason,
                        data_out,
                        out_headers,
                        length=len(data)
                        if method.upper() != "HEAD"
                        else out_headers.get("Content-Length"),
                    )
                )
                if headers.get("connection", "").lower() == "close":
                    return
        except _Reset:
            reader.close()
            _reset(conn)
            conn = None
        except (OSError, ValueError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            with self._lock:
                if conn is not None:
                    self._conns.discard(conn)
            if conn is not None:
                try:
                    reader.close()
                    conn.close()
                except OSError:
                    pass

    def _play_fault(self, conn: socket.socket, req: Request, kind: str, rule: Rule | None) -> None:
        """Answer 503 Slow Down, or raise _Reset for a reset or a refusal."""
        self._record(req, kind, 503 if kind == "503" else None, rule)
        if kind != "503":
            raise _Reset
        body_503 = b"" if req.method == "HEAD" else _SLOWDOWN  # HEAD: its length, no body
        headers = {"Content-Type": "application/xml", "x-amz-request-id": "FAULTPROXY"}
        conn.sendall(self._response(503, "Slow Down", body_503, headers, length=len(_SLOWDOWN)))

    def _forward_or_reset(
        self,
        upstream: http.client.HTTPConnection,
        req: Request,
        method: str,
        target: str,
        headers: dict,
        body: bytes,
    ) -> tuple[int, str, dict, bytes]:
        """The upstream's answer; a failure to reach it resets the client's connection."""
        try:
            return self._forward(upstream, method, target, headers, body)
        except (OSError, http.client.HTTPException):
            upstream.close()
            self._record(req, "upstream_error", None, None)
            raise _Reset from None

    def _decide(self, req: Request) -> tuple[str | None, Rule | None]:
        now = time.monotonic()
        with self._lock:
            if self._refusing_until is not None:
                if now < self._refusing_until:
                    return "refuse", None
            fired: list[Rule] = []
            for rule in self.rules:
                if rule.trigger is not None and rule.triggered_at is None:
                    try:
                        hit = rule.trigger(req)
                    except Exception:  # noqa: BLE001 - a bad trigger never breaks the proxy
                        hit = False
                    if hit:
                        fired.append(rule)
                    continue
                if not (rule.active(now) and rule.matches(req)):
                    continue
                rule.seen += 1
                if rule.seen % rule.every == 0 if rule.every else self._rng.random() < rule.rate:
                    rule.injected += 1
                    return rule.kind, rule
            for rule in fired:  # starts after this (forwarded) request
                rule.triggered_at = now
                rule.start = now
                rule.until = None if rule.duration is None else now + rule.duration
                if rule.kind == "refuse":
                    self._schedule_refuse(rule)
        return None, None

    def _record(self, req: Request, outcome: str, status: int | None, rule: Rule | None) -> None:
        with self._lock:
            self.log.append(
                LogEntry(
                    time.monotonic(),
                    req.method,
                    req.path,
                    req.query,
                    outcome,
                    status,
                    rule.name if rule else "",
                )
            )

    # ---------------------------------------------------------------------------- HTTP/1.1
    @staticmethod
    def _read_head(reader) -> tuple[str, str, dict[str, str]] | None:
        line = reader.readline(65537)
        while line in (b"\r\n", b"\n"):
            line = reader.readline(65537)
        if not line:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3:
            raise ValueError(f"bad request line {line!r}")
        method, target, _version = parts
        headers: dict[str, str] = {}
        order: list[tuple[str, str]] = []
        while True:
            h = reader.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            order.append((name.strip(), value.strip()))
            headers[name.strip().lower()] = value.strip()
        headers["__order__"] = order  # type: ignore[assignment]
        return method, target, headers

    @staticmethod
    def _read_body(reader, headers) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(reader.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while reader.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(reader.read(size))
                reader.readline()
            return b"".join(chunks)
        n = int(headers.get("content-length", "0") or 0)
        return reader.read(n) if n else b""

    @staticmethod
    def _forward(
        upstream: http.client.HTTPConnection, method: str, target: str, headers: dict, body: bytes
    ):
        upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers["__order__"]:
            low = name.lower()
            if low in _HOP_BY_HOP or low in ("content-length", "expect"):
                continue
            upstream.putheader(name, value)
        if body or method.upper() in ("PUT", "POST"):
            upstream.putheader("Content-Length", str(len(body)))
        upstream.endheaders(body if body else None)
        resp = upstream.getresponse()
        data = resp.read()
        out = {
            k: v
            for k, v in resp.getheaders()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        }
        if method.upper() == "HEAD":
            length = resp.getheader("Content-Length")
            if length is not None:
                out["Content-Length"] = length
        return resp.status, resp.reason, out, data

    @staticmethod
    def _response(
        status: int, reason: str, data: bytes, headers: dict, length: int | str | None = None
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        for k, v in headers.items():
            if k.lower() != "content-length":
                lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {len(data) if length is None else length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
