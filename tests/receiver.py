"""A real HTTP receiver of WF11 events for tests: it verifies each delivery's signature.

`Receiver` listens on 127.0.0.1 in a thread. `mode` says how it answers: "ok" (204), "error"
(503), "gone" (410), "moved" (308 to another path of its own), "hang" (it waits for `release`
before answering) or "trickle" (it answers a byte at a time, until `release`). `stop()` closes
the port (a refused connection, as a receiver that is down) and `start()` opens it again.
Every request that arrives is kept in `received`, with whether its signature verified.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = "whsec_" + base64.b64encode(b"revos-schema test receiver key!!").decode()
HANG_LIMIT_S = 30.0
TRICKLE_EVERY_S = 0.05


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.mode = "ok"
        self.received: list[Delivery] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/wf11/events"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {key.lower(): value for key, value in self.headers.items()}
                try:
                    Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver._lock:
                    receiver.received.append(Delivery(headers, body, verified))
                if receiver.mode == "hang":
                    receiver.release.wait(HANG_LIMIT_S)
                if receiver.mode == "trickle":
                    # An answer a byte at a time, each in good time, never finished.
                    for byte in b"HTTP/1.1 204 No Content\r\nX-Padding: " + b"x" * 1000:
                        if receiver.release.wait(TRICKLE_EVERY_S):
                            break
                        try:
                            self.wfile.write(bytes([byte]))
                        except OSError:
                            break
                    return
                status = {"error": 503, "gone": 410, "moved": 308}.get(receiver.mode, 204)
                self.send_response(status)
                if status == 308:
                    self.send_header("Location", "/wf11/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[str]:
        """The `webhook-id` of every request received, in order."""
        with self._lock:
            return [delivery.webhook_id for delivery in self.received]
