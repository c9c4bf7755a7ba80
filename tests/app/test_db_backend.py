"""`revos_schema.db.quiet`: the check that spares a query on a healthy idle connection."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connections

from revos_schema.db import quiet
from revos_schema.services import target_conninfo


@pytest.fixture
def conn():
    with psycopg.connect(target_conninfo(), autocommit=True) as opened:
        yield opened


def test_an_idle_connection_is_quiet_until_the_server_ends_its_session(conn):
    assert quiet(conn)
    with psycopg.connect(target_conninfo(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
    deadline = time.monotonic() + 10
    while quiet(conn) and time.monotonic() < deadline:
        time.sleep(0.01)

    assert not quiet(conn)


def test_a_connection_in_a_transaction_is_not_quiet(conn):
    conn.execute("BEGIN")

    assert not quiet(conn)


def test_a_closed_connection_is_not_quiet(conn):
    conn.close()

    assert not quiet(conn)


@pytest.mark.django_db
def test_the_app_uses_the_backend_with_that_check():
    for alias in ("default", "target"):
        assert type(connections[alias]).__module__ == "revos_schema.db.base"
    connections["default"].ensure_connection()
    assert connections["default"].is_usable()
