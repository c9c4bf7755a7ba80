"""Slow clients against gunicorn as the README recommends running it (gunicorn.conf.py).

gunicorn's gthread worker waits for a new connection's first bytes without holding a thread for
long, and closes a connection that sends nothing; once a request has begun, one thread reads the
rest of it, and the worker class of gunicorn.conf.py (revos_schema.gunicorn_worker) disconnects a
client that stays silent for WF106_CLIENT_TIMEOUT_S. These tests show both; that a body that stops
arriving is answered 400, not 500; that a client that stalls does not hold up the others while
the worker has threads to spare; and that more stalled clients than threads only delay the others
until their timeouts.
"""

from __future__ import annotations

import errno
import http.client
import io
import json
import select
import socket
import time
from contextlib import ExitStack

import pytest
from rest_framework.test import APIClient

from revos_schema.gunicorn_worker import BoundedSocket, client_timeout_s
from revos_schema.models import SchemaSubmission
from revos_schema.request_body import STALLED
from tests.app.gunicorn_helpers import recommended_gunicorn, recommended_settings
from tests.app.test_api import assert_envelope, make_token
from tests.app.test_api_concurrency import Server, request
from tests.builder.helpers import FIXTURES

URL = "/wf106/schema-builder"
# gunicorn's gthread worker waits this long for a new connection's first bytes on a thread
# (DEFAULT_WORKER_DATA_TIMEOUT in gunicorn/workers/gthread.py), then on its event loop.
FIRST_BYTES_WAIT_S = 5
# WF106_CLIENT_TIMEOUT_S of the servers that test it: short, for quick tests.
CLIENT_TIMEOUT_S = 3
# Slack for a busy machine: the bounds below are what the server guarantees, plus this.
MARGIN_S = 10
# How soon a request is served despite more stalled clients than threads: once the first ones
# have timed out, plus slack for a busy machine and for the worker's event loop, which lingers on
# each connection it closes.
SERVED_WITHIN_S = CLIENT_TIMEOUT_S + 15


def stalled_requests(token: str) -> dict[str, bytes]:
    """The first part of requests that stall: in the request line, the headers, the body."""
    head = f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
    json_head = head + "Content-Type: application/json\r\n"
    return {
        "request line": f"POST {URL[:8]}".encode(),
        "headers": (head + "Content-Ty").encode(),
        "body": (json_head + "Content-Length: 4000\r\n\r\n{").encode(),
        "chunked body": (json_head + "Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n").encode(),
    }


def connect(port: int, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=MARGIN_S)
    sock.sendall(first_bytes)
    return sock


def is_open(sock: socket.socket) -> bool:
    """Has the server neither sent anything on `sock` nor closed it, so far?"""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def received_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sent on `sock` before it closed it, or None if it is open at `deadline`."""
    received = b""
    while True:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            return None
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def parse_answer(raw: bytes) -> tuple[int, dict]:
    """The status and the JSON body of an HTTP answer received whole."""

    class Received:
        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(raw)

    answer = http.client.HTTPResponse(Received())  # type: ignore[arg-type]
    answer.begin()
    return answer.status, json.loads(answer.read())


def workers_booted(server: Server) -> int:
    return server.log.read_text(errors="replace").count("Booting worker")


def webhook_request(token: str) -> dict:
    body = (FIXTURES / "foundation_v001.json").read_bytes()
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    return {"body": body, "headers": headers}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_request_is_served_while_other_clients_stall(tmp_path, target_schema):
    token = make_token("svc-crm", permitted=True)
    # Fewer than one worker's threads: one is free whichever worker takes the request.
    stalls = list(stalled_requests(token).values())[:3]
    assert len(stalls) < recommended_settings()["threads"]

    with (
        recommended_gunicorn(tmp_path, WF106_TARGET_SCHEMA=target_schema) as server,
        ExitStack() as stalled,
    ):
        for first_bytes in stalls:
            stalled.enter_context(connect(server.port, first_bytes))
        time.sleep(1)  # the server has picked them up: each holds a thread
        status, answer = request(server.port, "POST", URL, **webhook_request(token))

    assert status == 200, answer
    assert json.loads(answer)["result"]["status"] == "applied"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_client_that_stalls_anywhere_in_a_request_is_disconnected(tmp_path, target_schema):
    token = make_token("svc-crm", permitted=True)
    settings = recommended_settings()

    with (
        recommended_gunicorn(
            tmp_path,
            WF106_TARGET_SCHEMA=target_schema,
            WF106_CLIENT_TIMEOUT_S=str(CLIENT_TIMEOUT_S),
        ) as server,
        ExitStack() as clients,
    ):
        opened = time.monotonic()
        stalled = {
            where: clients.enter_context(connect(server.port, first_bytes))
            for where, first_bytes in stalled_requests(token).items()
        }
        silent = clients.enter_context(connect(server.port))

        # Each is given the whole timeout (which starts once it has sent its bytes)...
        time.sleep(max(0.0, opened + CLIENT_TIMEOUT_S - 1 - time.monotonic()))
        open_before = {where: is_open(sock) for where, sock in stalled.items()}
        # ... and is disconnected after it.
        deadline = opened + CLIENT_TIMEOUT_S + MARGIN_S
        received = {where: received_until_closed(sock, deadline) for where, sock in stalled.items()}
        # A connection that sends nothing: a thread waits for its first bytes, then the worker's
        # event loop until `keepalive`, then it is closed.
        silent_deadline = opened + FIRST_BYTES_WAIT_S + settings["keepalive"] + MARGIN_S
        silent_received = received_until_closed(silent, silent_deadline)
        booted = workers_booted(server)

    assert open_before == dict.fromkeys(stalled, True)
    assert silent_received == b"", server.output()
    # Stalled before the request was read: closed with no answer.
    assert received["request line"] == b"", server.output()
    assert received["headers"] == b"", server.output()
    # Stalled in the body: the app answers that the body did not arrive, and stores that much.
    for where in ("body", "chunked body"):
        raw = received[where]
        assert raw, f"{where}: still open or closed without an answer\n{server.output()}"
        status, answer = parse_answer(raw)
        assert status == 400, answer
        assert_envelope(answer, "blocked")
        issue = {"path": "", "code": "invalid_json", "message": STALLED}
        assert answer["result"]["validation_errors"] == [issue]
        stored = SchemaSubmission.objects.get(pk=answer["result"]["submission_id"])
        assert (stored.status, stored.http_status, stored.envelope) == ("blocked", 400, None)
        assert stored.validation_errors == [issue]
    # The timeouts ended connections, not threads or worker processes.
    assert booted == settings["workers"], server.output()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_more_stalled_clients_than_threads_delay_a_request_only_until_their_timeout(
    tmp_path, target_schema
):
    token = make_token("svc-crm", permitted=True)
    stalls = list(stalled_requests(token).values())
    # One worker process, so that the stalled clients certainly hold all its threads (of two
    # processes, the first to accept might take every connection and leave the other idle).
    count = recommended_settings()["threads"] + 2

    with (
        recommended_gunicorn(
            tmp_path,
            "--workers",
            "1",
            WF106_TARGET_SCHEMA=target_schema,
            WF106_CLIENT_TIMEOUT_S=str(CLIENT_TIMEOUT_S),
        ) as server,
        ExitStack() as stalled,
    ):
        started = time.monotonic()
        for i in range(count):
            stalled.enter_context(connect(server.port, stalls[i % len(stalls)]))
        time.sleep(1)  # the server has picked them up: they hold every thread, the rest queue
        # The stalled clients stay connected: the server has to end them.
        status, answer = request(server.port, "POST", URL, **webhook_request(token))
        served_after = time.monotonic() - started

    assert status == 200, answer
    assert json.loads(answer)["result"]["status"] == "applied"
    # Held up until the first stalled clients timed out, and no longer than the bound.
    assert CLIENT_TIMEOUT_S <= served_after < SERVED_WITHIN_S, server.output()


class BrokenInput:
    """A WSGI input whose reads fail with `error`, as gunicorn's do for a body that stops short.

    (gunicorn's input reads until it has the size asked for, or the body's end.)
    """

    def __init__(self, error: OSError) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:
        raise self.error

    readline = read


CHUNKED_BROKEN = (
    "The request body could not be read: its chunked encoding is broken or the connection "
    "ended before its last chunk."
)
RESET = "The request body could not be read: the connection failed before its end."


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("framing", "error", "message"),
    [
        ("length", TimeoutError("timed out"), STALLED),
        ("chunked", TimeoutError("timed out"), STALLED),
        ("length", ConnectionResetError(errno.ECONNRESET, "reset"), RESET),
        ("chunked", ConnectionResetError(errno.ECONNRESET, "reset"), CHUNKED_BROKEN),
    ],
    ids=["timeout-length", "timeout-chunked", "reset-length", "reset-chunked"],
)
def test_a_body_whose_reading_fails_is_a_400_not_a_server_error(target, framing, error, message):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {make_token('svc-crm', permitted=True)}")
    framed = (
        {"CONTENT_LENGTH": "4000"}
        if framing == "length"
        else {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    )
    wsgi_input = BrokenInput(error)
    response = api.generic(
        "POST", URL, "", content_type="application/json", **framed, **{"wsgi.input": wsgi_input}
    )

    assert response.status_code == 400, response.content
    answer = response.json()
    assert_envelope(answer, "blocked")
    issue = {"path": "", "code": "invalid_json", "message": message}
    assert answer["result"]["validation_errors"] == [issue]
    assert SchemaSubmission.objects.get().validation_errors == [issue]


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 10.0), ("", 10.0), ("3", 3.0), (" 0.5 ", 0.5)]
)
def test_the_client_timeout_is_read_from_the_environment(value, seconds):
    environ = {} if value is None else {"WF106_CLIENT_TIMEOUT_S": value}
    assert client_timeout_s(environ) == seconds


@pytest.mark.parametrize("value", ["0", "-1", "ten", "nan", "inf"])
def test_a_client_timeout_that_is_not_a_positive_number_is_refused(value):
    with pytest.raises(ValueError, match="WF106_CLIENT_TIMEOUT_S must be a positive number"):
        client_timeout_s({"WF106_CLIENT_TIMEOUT_S": value})


def test_a_bounded_socket_blocks_with_the_client_timeout():
    server_side, client_side = socket.socketpair()
    with client_side:
        server_side.setblocking(False)  # as gunicorn leaves a connection it has just accepted
        bounded = BoundedSocket.replacing(server_side, 0.2)
        with bounded:
            assert server_side.fileno() == -1  # the old object lets go of the connection
            assert bounded.gettimeout() == 0.0
            with pytest.raises(BlockingIOError):
                bounded.recv(4)
            bounded.setblocking(True)
            assert bounded.gettimeout() == 0.2
            client_side.sendall(b"ping")
            assert bounded.recv(4) == b"ping"  # the same connection
            with pytest.raises(TimeoutError):
                bounded.recv(4)
            bounded.setblocking(False)
            assert bounded.gettimeout() == 0.0
