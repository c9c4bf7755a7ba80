"""Slow clients against gunicorn as the README recommends running it (gunicorn.conf.py).

gunicorn's gthread worker waits for a new connection's first bytes without holding a thread for
long, and closes a connection that sends nothing; once a request has begun, one thread reads the
rest of it with no time limit. These tests show both, and that a client that stalls does not
hold up the others while the worker has threads to spare. Bounding the stalled requests is the
reverse proxy's job (README, "Running in production").
"""

from __future__ import annotations

import json
import select
import socket
import time
from contextlib import ExitStack

import pytest

from tests.app.gunicorn_helpers import recommended_gunicorn, recommended_settings
from tests.app.test_api import make_token
from tests.app.test_api_concurrency import request
from tests.builder.helpers import FIXTURES

URL = "/wf106/schema-builder"
# gunicorn's gthread worker waits this long for a new connection's first bytes on a thread
# (DEFAULT_WORKER_DATA_TIMEOUT in gunicorn/workers/gthread.py), then on its event loop.
FIRST_BYTES_WAIT_S = 5
# Slack for a busy machine: the bounds below are what gunicorn guarantees, plus this.
MARGIN_S = 10
# The worker heartbeat, shortened on the command line so that the test outlasts it quickly.
SHORT_TIMEOUT_S = 6

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def stalled_requests(token: str) -> list[bytes]:
    """The first part of three requests: in the request line, in the headers, in the body."""
    head = f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
    return [
        f"POST {URL[:8]}".encode(),
        (head + "Content-Ty").encode(),
        (head + "Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{").encode(),
    ]


def connect(port: int, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=MARGIN_S)
    sock.sendall(first_bytes)
    return sock


def is_closed(sock: socket.socket, wait_s: float = 0.0) -> bool:
    """Has the server closed `sock` (within `wait_s`)? What it sent before closing is dropped."""
    deadline = time.monotonic() + wait_s
    while True:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            return False
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True


def test_a_request_is_served_while_other_clients_stall(tmp_path, target_schema):
    token = make_token("svc-crm", permitted=True)
    body = (FIXTURES / "foundation_v001.json").read_bytes()
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    assert len(stalled_requests(token)) < recommended_settings()["threads"]

    with (
        recommended_gunicorn(tmp_path, WF106_TARGET_SCHEMA=target_schema) as server,
        ExitStack() as stalled,
    ):
        for first_bytes in stalled_requests(token):
            stalled.enter_context(connect(server.port, first_bytes))
        time.sleep(1)  # the server has picked them up: each holds a thread
        status, answer = request(server.port, "POST", URL, body=body, headers=headers)

    assert status == 200, answer
    assert json.loads(answer)["result"]["status"] == "applied"


def test_silent_connections_are_closed_and_stalled_requests_are_not(tmp_path, target_schema):
    token = make_token("svc-crm", permitted=True)
    keepalive = recommended_settings()["keepalive"]

    with (
        recommended_gunicorn(
            tmp_path, "--timeout", str(SHORT_TIMEOUT_S), WF106_TARGET_SCHEMA=target_schema
        ) as server,
        ExitStack() as clients,
    ):
        opened = time.monotonic()
        stalled = [
            clients.enter_context(connect(server.port, first_bytes))
            for first_bytes in stalled_requests(token)
        ]
        silent = clients.enter_context(connect(server.port))

        # A connection that sends nothing: a thread waits for its first bytes, then the worker's
        # event loop until `keepalive`, then it is closed.
        assert is_closed(silent, FIRST_BYTES_WAIT_S + keepalive + MARGIN_S), server.output()
        # A connection inside a request: neither `keepalive` nor the worker `timeout` ends it.
        time.sleep(max(0.0, opened + SHORT_TIMEOUT_S + 2 - time.monotonic()))
        assert [is_closed(sock) for sock in stalled] == [False] * len(stalled)
