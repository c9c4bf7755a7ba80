"""Fixtures for the app's tests: target schemas that live inside the test's target transaction.

Each fixture creates a schema through the Django `target` connection and points that session's
search_path at it with SET LOCAL, so the unqualified `schema_migrations` of the ledger model finds
(or does not find) a table there. The test's transaction is rolled back afterwards, which drops it
all. Tests that use them need `@pytest.mark.django_db(databases=["default", "target"])`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connections

from builder.db import ledger
from revos_schema.models import SchemaEvent, SchemaSubmission


@pytest.fixture(scope="session")
def close_target_at_end(django_db_setup: None) -> Iterator[None]:
    """Close the `target` connection before the test database is dropped.

    `target` mirrors `default` in tests: Django closes the default connection before it drops the
    test database, but not a mirror's, and PostgreSQL refuses to drop a database in use.
    """
    yield
    connections["target"].close()


def _fresh_target_schema(*, with_ledger: bool) -> str:
    name = f"t_app_{uuid.uuid4().hex[:10]}"
    connection = connections["target"]
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{name}"')
        if with_ledger:
            ledger.ensure_ledger(connection.connection, name)
        cursor.execute(f'SET LOCAL search_path TO "{name}"')
    return name


@pytest.fixture
def ledger_schema(close_target_at_end: None) -> str:
    """Return a schema holding the builder's (empty) ledger table, first on the search_path."""
    return _fresh_target_schema(with_ledger=True)


@pytest.fixture
def empty_target_schema(close_target_at_end: None) -> str:
    """Return an empty schema, alone on the search_path: a target with no ledger yet."""
    return _fresh_target_schema(with_ledger=False)


@pytest.fixture
def target(settings: Any, target_schema: str) -> str:
    """Point the app's builder settings at a fresh schema of the test target database."""
    settings.WF106_TARGET_SCHEMA = target_schema
    return target_schema


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    """Hash test passwords cheaply: the default hasher spends about a second on each one."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@contextmanager
def trigger(table: str, when: str, body: str) -> Iterator[None]:
    """A row trigger `when` (e.g. "BEFORE INSERT") on `table` that runs the PL/pgSQL `body`."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION wf106_test_trigger() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN {body} END $$"
        )
        cursor.execute(
            f'CREATE TRIGGER wf106_test_trigger {when} ON "{table}" '
            "FOR EACH ROW EXECUTE FUNCTION wf106_test_trigger()"
        )
    try:
        yield
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("DROP FUNCTION IF EXISTS wf106_test_trigger() CASCADE")


@pytest.fixture
def event_log_full() -> Iterator[None]:
    """Make PostgreSQL refuse every new `SchemaEvent` row: "the event log is full".

    A real failure of the event's INSERT, in whatever statement writes it; removed afterwards
    (in a test that runs in a transaction, the rollback removes it too).
    """
    with trigger(
        SchemaEvent._meta.db_table,
        "BEFORE INSERT",
        "RAISE EXCEPTION 'the event log is full';",
    ):
        yield


@pytest.fixture
def submission_updates_skipped() -> Iterator[None]:
    """Make every UPDATE of a `SchemaSubmission` row change nothing, without an error."""
    with trigger(SchemaSubmission._meta.db_table, "BEFORE UPDATE", "RETURN NULL;"):
        yield
