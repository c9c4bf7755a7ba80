"""Shared fixtures: a real PostgreSQL target for every database test (never a mock, never SQLite).

pytest-django creates the test database; builder tests talk to it with plain psycopg inside a
schema of their own (`target_schema`), dropped afterwards, so tests never see each other's tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.receiver import SECRET, Receiver


@pytest.fixture(scope="session")
def close_pools_before_drop(django_db_setup: None) -> Iterator[None]:
    """Close the app's pooled target connections before pytest-django drops the test database."""
    yield
    from revos_schema.services import close_target_pools

    close_target_pools()


@pytest.fixture
def target_dsn(
    close_pools_before_drop: None,
    django_db_setup: None,
    django_db_blocker: pytest.FixtureRequest,
) -> Iterator[str]:
    """Return the conninfo of the (test) target database."""
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        from revos_schema.services import target_conninfo

        yield target_conninfo()


@pytest.fixture
def target_schema(target_dsn: str) -> Iterator[str]:
    """Create a fresh PostgreSQL schema for one test and drop it afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def target_conn(target_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection to the target database."""
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    """A real HTTP receiver of WF11 events, running, and the settings that deliver to it."""
    running = Receiver()
    running.start()
    settings.WF11_WEBHOOK_URL = running.url
    settings.WF11_WEBHOOK_SECRET = SECRET
    yield running
    running.stop()
