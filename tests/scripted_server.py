"""A scripted loopback HTTP server for tests: queued replies, recorded requests.

Usage::

    with ScriptedServer() as srv:
        srv.reply(Reply(200, {"data": [...]}), Reply(drop=True))      # any path, FIFO
        srv.route("GET", "/img/a.png", Reply(503), Reply(200, png))   # one path, FIFO
        srv.fallback = lambda req: Reply(200, {"data": []})           # when queues are empty
        client = Client(srv.base_url, "key")
        ...
        assert srv.task_types() == ["imageInference", "getResponse"]

A reply can also be a callable taking the recorded request and returning a `Reply`.
A request with no reply queued gets HTTP 599 with a JSON `errors` body naming the problem.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["Recorded", "Reply", "ScriptedServer", "ack", "error_body", "ok"]


@dataclass
class Reply:
    """One scripted answer: status, headers and body, or an action (delay, drop)."""

    status: int = 200
    body: Any = None  # dict/list → JSON; str → text/plain; bytes → raw; None → empty body
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (a stall; longer than the read timeout → timeout)
    drop: bool = False  # read the request, then close the connection without answering
    content_type: str | None = None  # overrides the type derived from `body`


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it was read

    @property
    def json(self) -> Any:
        """The body parsed as JSON, or None."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """The task objects of a Runware-style JSON array body (empty if none)."""
        data = self.json
        return [t for t in data if isinstance(t, dict)] if isinstance(data, list) else []


ReplySource = Reply | Callable[[Recorded], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ScriptedServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Broken pipes after a client timeout are expected; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        rec = Recorded(self.command, self.path, dict(self.headers.items()), raw, time.monotonic())
        owner = self.server.owner
        reply = owner._take(rec)
        if reply.delay_s > 0 and owner._stop.wait(reply.delay_s):
            reply = Reply(drop=True)
        if reply.drop:
            self.close_connection = True
            return
        payload, ctype = _encode(reply)
        try:
            self.send_response(reply.status)
            headers = {"Content-Type": ctype, **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True


def _encode(reply: Reply) -> tuple[bytes, str]:
    body = reply.body
    if isinstance(body, bytes):
        return body, reply.content_type or "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), reply.content_type or "text/plain; charset=utf-8"
    if body is None:
        return b"", reply.content_type or "text/plain"
    return json.dumps(body).encode(), reply.content_type or "application/json"


class ScriptedServer:
    """A ThreadingHTTPServer on 127.0.0.1:0 answering from queued replies; records every request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queue: deque[ReplySource] = deque()
        self._routes: dict[tuple[str, str], deque[ReplySource]] = {}
        self.fallback: Callable[[Recorded], Reply] | None = None
        self.requests: list[Recorded] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def reply(self, *replies: ReplySource) -> None:
        """Queue replies for the next requests, whatever their path."""
        with self._lock:
            self._queue.extend(replies)

    def route(self, method: str, path: str, *replies: ReplySource) -> None:
        """Queue replies for requests to exactly `method path` (served before the main queue)."""
        with self._lock:
            self._routes.setdefault((method.upper(), path), deque()).extend(replies)

    def pending(self) -> int:
        """Replies still queued (main queue and routes)."""
        with self._lock:
            return len(self._queue) + sum(len(q) for q in self._routes.values())

    def task_types(self) -> list[str]:
        """The taskType of every task of every recorded POST, in order."""
        with self._lock:
            recs = list(self.requests)
        return [str(t.get("taskType")) for r in recs if r.method == "POST" for t in r.tasks]

    def posts(self) -> list[Recorded]:
        """Recorded POST requests, in order."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def _take(self, rec: Recorded) -> Reply:
        with self._lock:
            self.requests.append(rec)
            route = self._routes.get((rec.method, rec.path.split("?")[0]))
            source: ReplySource | None = None
            if route:
                source = route.popleft()
            elif self._queue:
                source = self._queue.popleft()
            elif self.fallback is not None:
                source = self.fallback
        if source is None:
            return Reply(599, error_body("scriptExhausted", f"no reply queued for {rec.method}"))
        return source(rec) if callable(source) else source

    def close(self) -> None:
        """Stop serving and wake any sleeping handler."""
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def ok(*items: dict[str, Any]) -> dict[str, Any]:
    """A Runware success body."""
    return {"data": list(items)}


def ack(task_uuid: str, task_type: str = "imageInference") -> dict[str, Any]:
    """A Runware async acknowledgement body."""
    return {"data": [{"taskType": task_type, "taskUUID": task_uuid}]}


def error_body(
    code: str, message: str = "", *, data: bool = False, **fields: Any
) -> dict[str, Any]:
    """A Runware error body `{"errors": [{code, message, ...}]}` (with `"data": []` if asked)."""
    body: dict[str, Any] = {"errors": [{"code": code, "message": message, **fields}]}
    if data:
        body["data"] = []
    return body
