"""Apply a rendered migration to the target database, recording every attempt in the ledger.

One apply is:
1. Without any lock, one read of the ledger: a version already applied with the same hash is a
   noop, answered at once (the common case of a retrying service).
2. One transaction: the advisory lock of the target schema (so two identical requests cannot both
   apply, and two first applies cannot race on creating the ledger), `lock_timeout` and
   `statement_timeout` set locally, the ledger created if missing, the ledger lookup (noop /
   conflict), the DDL script and the `success` ledger row. Either all of it commits or none of
   it does.
3. On an execution error: that transaction is rolled back (the target is exactly as before) and a
   `failed` row with the error is recorded in a transaction of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from builder import ledger
from builder.spec import Schema

APPLIED = "applied"
NOOP = "noop"
CONFLICT = "conflict"
FAILED = "failed"


@dataclass(frozen=True)
class ApplySettings:
    """Where and how carefully to apply.

    The timeouts fit a busy production database: DDL that cannot get its lock within
    `lock_timeout_ms` fails instead of queueing every other query behind it.
    `lock_wait_ms` bounds the wait for another apply of the same target to finish.
    """

    target_schema: str = "public"
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 120_000
    lock_wait_ms: int = 60_000


@dataclass(frozen=True)
class Attempt:
    """One request to apply `script` for `schema`."""

    schema: Schema
    script: str
    checksum: str
    schema_hash: str
    idempotency_key: str
    tenant_id: str | None = None
    actor_id: str | None = None
    workflow_run_id: str | None = None
    force: bool = False


@dataclass(frozen=True)
class ApplyResult:
    """What happened. `ledger_id` is the row written (applied/failed) or found (noop/conflict)."""

    status: str
    ledger_id: str | None = None
    applied_at: datetime | None = None
    applied_schema_hash: str | None = None
    tables_created: tuple[str, ...] = ()
    indexes_created: tuple[str, ...] = ()
    existing_tables: tuple[str, ...] = ()
    error: str | None = None
    db_ms: int = 0
    reapplied: bool = False


def advisory_lock_key(target_schema: str) -> str:
    """Return the text hashed into the advisory lock of one target schema."""
    return f"wf106:{target_schema}"


def apply_attempt(
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    *,
    before_write: Callable[[], None] | None = None,
) -> ApplyResult:
    """Apply `attempt` on `conn` (autocommit, idle) and record it; never raise for DB errors.

    `before_write` is called once before anything is written to the target (the ledger, the
    DDL), so that a caller can record the attempt first; it is not called when the version is
    found already applied without taking the lock (the cheap, common noop).
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("apply_attempt needs an idle connection (no transaction in progress)")
    started = time.monotonic()
    ledger_found = False
    if not attempt.force:
        try:
            already, ledger_found = _applied_without_lock(conn, attempt, settings)
        except psycopg.Error:
            already = None  # decided again, and reported, under the lock below
        if already is not None:
            return replace(already, db_ms=_elapsed_ms(started))
    if before_write is not None:
        before_write()
    try:
        result = _apply_in_transaction(conn, attempt, settings, create_ledger=not ledger_found)
    except psycopg.Error as exc:
        error = describe_error(exc)
        ledger_id, applied_at = _record_failure(conn, attempt, settings, error, started)
        return ApplyResult(
            status=FAILED,
            ledger_id=ledger_id,
            applied_at=applied_at,
            error=error,
            db_ms=_elapsed_ms(started),
        )
    return replace(result, db_ms=_elapsed_ms(started))


def _apply_in_transaction(
    conn: psycopg.Connection[Any], attempt: Attempt, settings: ApplySettings, *, create_ledger: bool
) -> ApplyResult:
    target = settings.target_schema
    with conn.transaction():
        existing, before = _lock_and_read(conn, attempt, settings, create_ledger=create_ledger)
        if existing is not None and existing.schema_hash != attempt.schema_hash:
            return ApplyResult(
                status=CONFLICT,
                ledger_id=existing.id,
                applied_at=existing.applied_at,
                applied_schema_hash=existing.schema_hash,
            )
        if existing is not None and not attempt.force:
            return ApplyResult(
                status=NOOP,
                ledger_id=existing.id,
                applied_at=existing.applied_at,
                applied_schema_hash=existing.schema_hash,
            )
        status = ledger.STATUS_REAPPLIED if existing is not None else ledger.STATUS_SUCCESS
        tables = tuple(t.name for t in attempt.schema.tables if t.name not in before)
        indexes = tuple(
            i.name for t in attempt.schema.tables for i in t.indexes if i.name not in before
        )
        row = _ledger_row(attempt, status, execution_ms=None)
        metadata = {
            **row.metadata,
            "tables_created": list(tables),
            "indexes_created": list(indexes),
        }
        row = replace(row, metadata=metadata)
        # The script and its ledger row in one round trip: the row's INSERT runs only if every
        # statement of the script succeeded, and records the server's time for the script.
        record = ledger.insert_row_sql(target, row).as_bytes(conn)
        with conn.cursor() as cur:
            cur.execute(attempt.script.encode() + b";\n" + record)
            ledger_id, applied_at = ledger.inserted_row(cur.set_result(-1).fetchone())
    return ApplyResult(
        status=APPLIED,
        ledger_id=ledger_id,
        applied_at=applied_at,
        applied_schema_hash=attempt.schema_hash,
        tables_created=tables,
        indexes_created=indexes,
        existing_tables=tuple(t.name for t in attempt.schema.tables if t.name in before),
        reapplied=existing is not None,
    )


def _applied_without_lock(
    conn: psycopg.Connection[Any], attempt: Attempt, settings: ApplySettings
) -> tuple[ApplyResult | None, bool]:
    """Return the noop result if this exact version is already applied, without any lock.

    A `success` row is never removed or changed, so finding one needs no lock; this keeps
    repeated identical requests (the common case for retrying services) cheap. Anything else is
    decided under the advisory lock. One autocommit statement: no transaction to open. The
    second value tells whether the ledger table exists (the builder never drops it).
    """
    try:
        existing = ledger.find_applied(conn, settings.target_schema, attempt.schema.version)
    except psycopg.errors.UndefinedTable:  # no ledger yet: the first apply creates it
        return None, False
    if existing is None or existing.schema_hash != attempt.schema_hash:
        return None, True
    noop = ApplyResult(
        status=NOOP,
        ledger_id=existing.id,
        applied_at=existing.applied_at,
        applied_schema_hash=existing.schema_hash,
    )
    return noop, True


def _lock_and_read(
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    *,
    create_ledger: bool = True,
) -> tuple[ledger.LedgerRow | None, set[str]]:
    """Start the apply transaction in one round trip; return the applied row and relations.

    In order: wait at most `lock_wait_ms` for the target's transaction-level advisory lock;
    then set `lock_timeout` and `statement_timeout` for the rest of the transaction; create the
    ledger if it is missing (unless `create_ledger` is false: the caller just read it); read
    the version's successful ledger row and the names of the tables and indexes that exist in
    the target schema. The statements carry their values as quoted literals (psycopg's
    `sql.Literal`) so that they can go as one simple query.
    """
    target = settings.target_schema
    statements = [
        _set_local_sql("lock_timeout", f"{settings.lock_wait_ms}ms"),
        sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended({}, 0))").format(
            sql.Literal(advisory_lock_key(target))
        ),
        _set_local_sql("lock_timeout", f"{settings.lock_timeout_ms}ms"),
        _set_local_sql("statement_timeout", f"{settings.statement_timeout_ms}ms"),
        *([ledger.ensure_ledger_sql(target)] if create_ledger else []),
        ledger.find_applied_sql(target, attempt.schema.version),
        sql.SQL(
            "SELECT c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = {} AND c.relkind IN ('r', 'p', 'i', 'I')"
        ).format(sql.Literal(target)),
    ]
    with conn.cursor() as cur:
        cur.execute(sql.SQL(";\n").join(statements))
        existing = ledger.ledger_row(cur.set_result(-2).fetchone())
        before = {row[0] for row in cur.set_result(-1).fetchall()}
    return existing, before


def _set_local_sql(name: str, value: str) -> sql.Composed:
    """Return the statement that sets a parameter for the current transaction (SET LOCAL)."""
    return sql.SQL("SELECT set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))


def _record_failure(
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    error: str,
    started: float,
) -> tuple[str | None, datetime | None]:
    """Record a `failed` row in its own transaction; return (None, None) if even that fails."""
    if conn.closed or conn.broken:
        return None, None
    row = _ledger_row(attempt, ledger.STATUS_FAILED, execution_ms=_elapsed_ms(started))
    row = replace(row, error_message=error)
    try:
        with conn.transaction():
            ledger.ensure_ledger(conn, settings.target_schema)
            return ledger.insert_row(conn, settings.target_schema, row)
    except psycopg.Error:
        return None, None


def _ledger_row(attempt: Attempt, status: str, *, execution_ms: int | None) -> ledger.NewLedgerRow:
    schema = attempt.schema
    return ledger.NewLedgerRow(
        version=schema.version,
        description=schema.description,
        applied_by=attempt.actor_id,
        checksum=attempt.checksum,
        status=status,
        sql_script=attempt.script,
        schema_hash=attempt.schema_hash,
        idempotency_key=attempt.idempotency_key,
        tenant_id=attempt.tenant_id,
        workflow_run_id=attempt.workflow_run_id,
        metadata={
            "table_count": len(schema.tables),
            "tables": [t.name for t in schema.tables],
            "indexes": [i.name for t in schema.tables for i in t.indexes],
            "workflow_run_id": attempt.workflow_run_id,
            "force_apply": attempt.force,
        },
        execution_ms=execution_ms,
    )


def describe_error(exc: psycopg.Error) -> str:
    """Return a one-paragraph description of a database error: SQLSTATE, message, detail."""
    diag = exc.diag
    parts = [f"{exc.sqlstate or 'error'}: {diag.message_primary or str(exc).strip()}"]
    if diag.message_detail:
        parts.append(f"DETAIL: {diag.message_detail}")
    if diag.context:
        parts.append(f"CONTEXT: {diag.context.strip()}")
    return "\n".join(parts)


def _elapsed_ms(since: float) -> int:
    return round((time.monotonic() - since) * 1000)
