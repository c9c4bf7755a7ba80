"""gunicorn's threaded worker with a time limit on each read and write of a client's socket.

gunicorn's `gthread` worker gives a connection that has sent its first bytes to one of its
threads, which switches the socket to blocking mode, with no timeout, and reads the rest of the
request line, the headers and the body: a client that stops sending holds the thread until it
disconnects, and as many stalled clients as there are threads leave none to serve anyone.

`BoundedThreadWorker` replaces each client's socket, when the worker first takes the connection,
by a `BoundedSocket` on the same file descriptor, whose blocking mode has a timeout of
`WF106_CLIENT_TIMEOUT_S` seconds: a read that waits longer for the client, or a write of the
answer that the client does not take within it, raises TimeoutError. In the request line or the
headers, gunicorn's handler catches it (an OSError), logs it and closes the connection; in the
body, the app answers 400 `invalid_json` (see `revos_schema.request_body`) and gunicorn closes
the connection after the answer. A client that sends a byte now and then is not bounded: only a
silence is.

With gunicorn's own TLS (`certfile`), the socket is left as it is: gunicorn wraps it in an
SSLSocket, whose blocking mode has no timeout again, and the wrapped socket cannot be replaced
without its TLS state. TLS belongs to the reverse proxy in front (README, "Running in
production").
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

CLIENT_TIMEOUT_ENV = "WF106_CLIENT_TIMEOUT_S"
DEFAULT_CLIENT_TIMEOUT_S = 10.0


def client_timeout_s(environ: Mapping[str, str] = os.environ) -> float:
    """The seconds a client may stay silent in a read or write (WF106_CLIENT_TIMEOUT_S)."""
    raw = environ.get(CLIENT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CLIENT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{CLIENT_TIMEOUT_ENV} must be a positive number of seconds, not {raw!r}")
    return value


class BoundedSocket(socket.socket):
    """A socket whose blocking mode waits at most `client_timeout` seconds per operation.

    gunicorn switches a client's socket between non-blocking (while its event loop waits for the
    client) and blocking (while a thread serves it) with `setblocking`; here blocking means
    `settimeout(client_timeout)`. Code that sets a timeout itself (gunicorn's drain of an unread
    body, its graceful close) still does.
    """

    client_timeout: float = DEFAULT_CLIENT_TIMEOUT_S

    @classmethod
    def replacing(cls, sock: socket.socket, client_timeout: float) -> BoundedSocket:
        """Take over `sock`'s connection; `sock` is detached from it, and must not be used."""
        was_blocking = sock.gettimeout() != 0.0
        bounded = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        bounded.client_timeout = client_timeout
        # A socket made from a descriptor does not know its mode: set it again.
        bounded.setblocking(was_blocking)
        return bounded

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(self.client_timeout)
        else:
            super().setblocking(False)


class BoundedThreadWorker(ThreadWorker):
    """gunicorn's `gthread` worker, serving each client on a `BoundedSocket`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The arbiter makes a worker before it forks it: a bad value stops the server at start.
        self.client_timeout = client_timeout_s()

    def enqueue_req(self, conn: TConn) -> None:
        # Called for a new connection, and again whenever one that waited on the event loop (kept
        # alive, deferred until its first bytes, or holding the start of its next request)
        # goes back to a thread: the socket is replaced the first time only.
        if not self.cfg.is_ssl and not isinstance(conn.sock, BoundedSocket):
            conn.sock = BoundedSocket.replacing(conn.sock, self.client_timeout)
        super().enqueue_req(conn)
