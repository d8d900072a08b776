"""A webhook receiver on loopback for the tests: a real HTTP server in a thread.

It answers each POST with the next status of a script (then 200), records what arrived,
and can be told to stall (for timeouts). Not a mock: the dispatcher talks real HTTP to it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from service.config import Settings
from service.webhooks import verify


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    """What the receiver answered."""
    at: float


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)
    """Answers still to give, in order; 200 once they are spent."""
    stall_seconds: list[float] = field(default_factory=list)
    """Pauses before answering, per request in order; none once they are spent."""
    received: list[Received] = field(default_factory=list)
    redirect_to: str | None = None
    endless: bool = False
    """Answer with a body that never ends (until the client hangs up)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.received if path is None or r.path == path)

    def deliveries(self, settings: Settings) -> list[tuple[str, dict]]:
        """The verified (webhook-id, JSON body) of every 2xx-answered request."""
        import json

        assert settings.webhook_secret is not None
        secret = settings.webhook_secret.get_secret_value()
        with self.lock:
            answered = [r for r in self.received if 200 <= r.status < 300]
        return [(verify(secret, r.headers, r.body), json.loads(r.body)) for r in answered]


@contextmanager
def receiver(statuses: Sequence[int] = ()) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 and a free port for the block."""
    state = Receiver(url="", statuses=list(statuses))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with state.lock:
                stall = state.stall_seconds.pop(0) if state.stall_seconds else 0.0
                status = state.statuses.pop(0) if state.statuses else 200
                if state.redirect_to is not None and self.path != "/moved":
                    status = 307
            time.sleep(stall)
            with state.lock:
                state.received.append(
                    Received(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        status,
                        time.time(),
                    )
                )
            self.send_response(status)
            if state.endless:
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for _ in range(100_000):  # 1.6 GB: "forever" for a test
                        self.wfile.write(chunk)
                return
            if status == 307:
                self.send_header("location", state.redirect_to or "/")
            payload = b"ok" if status < 300 else b"x" * 100_000  # more than the 4 KB read
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            # The dispatcher reads only the first few KB, then may hang up.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
