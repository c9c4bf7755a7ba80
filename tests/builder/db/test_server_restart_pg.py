"""An apply whose PostgreSQL server stops in the middle of its script: a private server (the
embedded PostgreSQL), stopped while the apply waits for a lock, then started again or not."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import run_schema_builder
from revos_schema import localdb
from tests.builder.helpers import PATIENTS, envelope

SCHEMA = "app"
WITH_EMAIL = {**PATIENTS, "columns": [*PATIENTS["columns"], {"name": "email", "type": "TEXT"}]}


class Server:
    """A private server; `url` follows it across restarts (its port may change)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.url = localdb.start(pgdata).url

    def restart(self) -> None:
        self.url = localdb.start(self.pgdata).url

    @contextmanager
    def lend(self, wait_s: float):
        """A new connection, waiting up to `wait_s` for the server (as a pool would)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with conn:
            yield conn


@pytest.fixture
def server(tmp_path: Path):
    pgdata = tmp_path / "pgdata"
    try:
        yield Server(pgdata)
    finally:
        localdb.stop(pgdata)


def ledger(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            sql.SQL("SELECT version, status, error_message FROM {} ORDER BY applied_at").format(
                sql.Identifier(SCHEMA, "schema_migrations")
            )
        ).fetchall()


def stop_during_script(server: Server, wait_s: float, restart: bool) -> Any:
    """Apply v002 while a transaction holds its table; stop the server while its ALTER waits."""
    settings = ApplySettings(target_schema=SCHEMA, lock_timeout_ms=60_000)
    with psycopg.connect(server.url, autocommit=True) as conn:
        assert run_schema_builder(envelope([PATIENTS]), conn, settings=settings).status == "applied"
    holder = psycopg.connect(server.url)
    holder.execute(
        sql.SQL("INSERT INTO {} (tenant_id, first_name, last_name) VALUES (%s, 'a', 'b')").format(
            sql.Identifier(SCHEMA, "patients")
        ),
        ["00000000-0000-0000-0000-00000000000a"],
    )
    outcomes: list[Any] = []
    first = psycopg.connect(server.url, autocommit=True)
    lent = iter([first])

    def lender():
        conn = next(lent, None)
        return server.lend(wait_s) if conn is None else nullcontext(conn)

    worker = threading.Thread(
        target=lambda: outcomes.append(
            run_schema_builder(envelope([WITH_EMAIL], version="002"), lender, settings=settings)
        )
    )
    worker.start()
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    deadline = time.monotonic() + 30
    while not holder.execute(waiting).fetchone()[0]:
        assert time.monotonic() < deadline, "the apply never waited for the lock"
        time.sleep(0.05)
    localdb.stop(server.pgdata)  # a fast shutdown: every session is ended
    if restart:
        server.restart()
    worker.join(timeout=60)
    first.close()
    holder.close()
    [outcome] = outcomes
    return outcome


def test_a_server_stopped_mid_apply_and_back_soon_gets_the_failure_in_its_ledger(server):
    outcome = stop_during_script(server, wait_s=30, restart=True)

    assert outcome.status == "failed" and not outcome.unrecorded
    rows = ledger(server.url)
    assert [(r[0], r[1]) for r in rows] == [("001", "success"), ("002", "failed")]
    assert "recorded on a new one" in rows[1][2]
    with psycopg.connect(server.url) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'patients'",
            [SCHEMA],
        ).fetchall()
    assert ("email",) not in columns


def test_a_server_that_stays_down_leaves_the_attempt_to_be_settled(server):
    outcome = stop_during_script(server, wait_s=0, restart=False)

    assert outcome.status == "failed" and outcome.unrecorded
    assert "settled from its ledger" in outcome.response["result"]["summary"]
    server.restart()
    # It never committed: the ledger has v001 only until the attempt is settled (reconcile).
    assert [(r[0], r[1]) for r in ledger(server.url)] == [("001", "success")]
