"""Identical requests in parallel through the production server (gunicorn), over real HTTP.

Eight identical POSTs start together against two worker processes of four threads each: the
advisory lock on the target must let exactly one of them apply and turn the others into `noop`,
with no server error, and the ledger must hold exactly one successful row.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections
from psycopg import sql
from rest_framework.authtoken.models import Token

from builder.db.ledger import LEDGER_TABLE
from revos_schema.envvars import environment_without_settings
from revos_schema.models import SchemaEvent, SchemaSubmission
from tests.builder.helpers import FIXTURES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
URL = "/wf106/schema-builder"
PARALLEL = 8
READY_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

# The server only sees committed rows: no test transaction around this module's tests.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def database_url(alias: str = "default") -> str:
    """Return a URL for the database of `alias` (the test database under pytest-django).

    A unix-socket directory goes in the host part percent-encoded (libpq's form), which the
    settings' `_db_config` decodes again.
    """
    config = connections[alias].settings_dict
    host = config.get("HOST") or ""
    if host.startswith("/"):
        host = quote(host, safe="")
    elif ":" in host:
        host = f"[{host}]"
    user = quote(config.get("USER") or "", safe="")
    password = config.get("PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}" if password else user
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"postgresql://{credentials}@{host}{port}/{quote(config['NAME'], safe='')}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(port: int, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request(method, path, **kwargs)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Server:
    """A gunicorn process serving the app, with its output in a file."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-10_000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"gunicorn exited with {self.process.returncode} before it was ready:\n"
                    + self.output()
                )
            try:
                status, _ = request(self.port, "GET", "/api/schema/?format=json")
            except OSError:
                time.sleep(0.2)
                continue
            if status == 200:
                return
            pytest.fail(f"gunicorn answered {status} to the schema request:\n{self.output()}")
        pytest.fail(f"gunicorn was not ready within {READY_TIMEOUT_S} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: workers close their connections
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own group: only its workers
                self.process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def server(target_schema: str, tmp_path: Path) -> Iterator[Server]:
    """Run gunicorn (2 workers x 4 threads) on a free loopback port, against the test database."""
    port = free_port()
    env = environment_without_settings()
    env.update(
        DJANGO_SETTINGS_MODULE="revos_schema.settings",
        DATABASE_URL=database_url(),
        SECRET_KEY="concurrency-test-" + os.urandom(16).hex(),
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="0",
        WF106_TARGET_SCHEMA=target_schema,
        PYTHONPATH=str(PROJECT_ROOT),
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--threads",
        "4",
        "--timeout",
        "60",
        "--graceful-timeout",
        "10",
        # gunicorn 27 opens a control socket at a fixed path shared by every instance.
        "--no-control-socket",
        "revos_schema.wsgi:application",
    ]
    with serve(command, env, port, tmp_path / "gunicorn.log") as running:
        yield running


@contextmanager
def serve(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[Server]:
    """Start the server `command` (listening on `port`), wait until it answers, stop it after."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its workers only
        )
    running = Server(process, port, log)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture
def token() -> str:
    """A committed service account holding `submit_schema` (the server must see it)."""
    user = User.objects.create_user("svc-parallel")
    user.user_permissions.add(Permission.objects.get(codename="submit_schema"))
    return Token.objects.create(user=user).key


def test_identical_parallel_requests_apply_once(token, server, target_schema, target_conn):
    body = (FIXTURES / "foundation_v001.json").read_bytes()
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    start = threading.Barrier(PARALLEL, timeout=REQUEST_TIMEOUT_S)
    answers: list[tuple[int, bytes] | BaseException] = [ValueError("no answer")] * PARALLEL
    spans = [(0.0, 0.0)] * PARALLEL

    def send(slot: int) -> None:
        try:
            start.wait()
            began = time.monotonic()
            answers[slot] = request(server.port, "POST", URL, body=body, headers=headers)
            spans[slot] = (began, time.monotonic())
        except BaseException as exc:  # reported below, with the server's output
            answers[slot] = exc

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(PARALLEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * REQUEST_TIMEOUT_S)

    failures = [a for a in answers if isinstance(a, BaseException)]
    assert not failures, f"{failures}\n{server.output()}"
    # All of them were in flight together: the last one started before the first one finished.
    assert max(b for b, _ in spans) < min(e for _, e in spans), spans
    replies = [(a[0], json.loads(a[1])) for a in answers if not isinstance(a, BaseException)]
    codes = [status for status, _ in replies]
    assert codes == [200] * PARALLEL, f"{replies}\n{server.output()}"
    statuses = sorted(data["result"]["status"] for _, data in replies)
    assert statuses == ["applied"] + ["noop"] * (PARALLEL - 1), replies

    applied = next(data for _, data in replies if data["result"]["status"] == "applied")
    log_id = applied["result"]["primary_outputs"]["migration_log_id"]
    for _, data in replies:
        if data["result"]["status"] == "noop":
            assert data["result"]["primary_outputs"]["migration_log_id"] == log_id
    ledger = target_conn.execute(
        sql.SQL("SELECT id::text, version, status FROM {}").format(
            sql.Identifier(target_schema, LEDGER_TABLE)
        )
    ).fetchall()
    assert ledger == [(log_id, "001", "success")]
    stored = sorted(SchemaSubmission.objects.values_list("status", flat=True))
    assert stored == statuses
    assert SchemaEvent.objects.count() == 1


def test_a_server_whose_database_sessions_were_ended_serves_the_next_requests(token, server):
    """Django's and the target pool's connections that the server ended are replaced, not used.

    Both checks send a query only when the connection's socket has something to read
    (`revos_schema.db.quiet`); a session ended by the server has its FATAL message and EOF there.
    """
    body = (FIXTURES / "foundation_v001.json").read_bytes()
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    sends = 12  # several of the workers' threads, each with its own Django connection

    def send_all() -> list[tuple[int, str]]:
        answers = [
            request(server.port, "POST", URL, body=body, headers=headers) for _ in range(sends)
        ]
        return [(status, json.loads(data)["result"]["status"]) for status, data in answers]

    first = send_all()
    own = {
        connections[alias].connection.info.backend_pid
        for alias in ("default", "target")
        if connections[alias].connection is not None
    }
    with psycopg.connect(database_url(), autocommit=True) as admin:
        own.add(admin.info.backend_pid)
        ended = admin.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "AND pid <> ALL(%s)",
            [list(own)],
        ).fetchall()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (
            admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [[p for p, _ in ended]]
            ).fetchone()[0]
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    again = send_all()

    assert len(ended) >= 3, ended  # the Django connections of some threads, and target pools
    assert first == [(200, "applied")] + [(200, "noop")] * (sends - 1), server.output()
    assert again == [(200, "noop")] * sends, server.output()
