"""Apply a rendered migration to the target database, recording every attempt in the ledger.

An apply is a straight line, like Django's schema editor inside `transaction.atomic()`:

1. Without any lock, one read of the ledger: a version already applied with the same hash is a
   noop, answered at once (the common case of a service that retries).
2. One transaction: wait at most `lock_wait_ms` for the target's advisory lock (so two identical
   requests cannot both apply, and two first applies cannot race on creating the ledger); set
   `lock_timeout` and `statement_timeout`; create the ledger if it is missing; read the
   version's row again (noop or conflict); read which of the schema's tables and indexes exist;
   run the script; if some of them existed, read what in them lets tenants reach each other's
   data (`catalog.tenant_isolation_gaps`); insert the ledger row; call the caller's
   `before_commit`; commit. Either all of it commits or none of it does.
3. On a database error: the transaction is rolled back (the target is exactly as before), and a
   `failed` row with the error is recorded in a transaction of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from builder.db import catalog, ledger
from builder.errors import CallerFailed
from builder.schema.spec import Schema
from builder.status import LedgerStatus, Status


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

    status: Status
    ledger_id: str | None = None
    applied_at: datetime | None = None
    applied_schema_hash: str | None = None
    tables_created: tuple[str, ...] = ()
    indexes_created: tuple[str, ...] = ()
    existing_tables: tuple[str, ...] = ()
    isolation_gaps: tuple[str, ...] = ()
    error: str | None = None
    db_ms: int = 0
    reapplied: bool = False

    @property
    def ledger_status(self) -> LedgerStatus:
        """The status of the ledger row this result wrote (for an apply or a failure)."""
        if self.status == Status.FAILED:
            return LedgerStatus.FAILED
        return LedgerStatus.REAPPLIED if self.reapplied else LedgerStatus.SUCCESS


def advisory_lock_key(target_schema: str) -> str:
    """Return the text hashed into the advisory lock of one target schema."""
    return f"wf106:{target_schema}"


def apply_attempt(
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    *,
    before_commit: Callable[[], None] | None = None,
) -> ApplyResult:
    """Apply `attempt` on `conn` (autocommit, idle) and record it; never raise for DB errors.

    `before_commit` is called once, inside the transaction, after the script and its ledger row
    ran and before the commit: a caller records the attempt there, so that a committed change is
    always on its record too. If it raises, the transaction is rolled back, a `failed` ledger row
    says why, and `CallerFailed` is raised from its exception. It is not called for a noop or a
    conflict.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("apply_attempt needs an idle connection (no transaction in progress)")
    started = time.monotonic()
    ledger_found = False
    if not attempt.force:
        try:
            existing = ledger.find_applied(conn, settings.target_schema, attempt.schema.version)
            ledger_found = True
        except psycopg.errors.UndefinedTable:
            existing = None  # the first apply creates the ledger; the builder never drops it
        except psycopg.Error:
            existing = None  # decided again, and reported, under the lock
        if existing is not None and existing.schema_hash == attempt.schema_hash:
            return _found(Status.NOOP, existing, started)
    try:
        with conn.transaction():
            result = _apply_locked(conn, attempt, settings, not ledger_found, before_commit)
    except _CallerError as failure:
        error = f"rolled back: recording the attempt failed: {failure.__cause__!r}"
        _record_failure(conn, attempt, settings, error, started)
        raise CallerFailed(error) from failure.__cause__
    except psycopg.Error as exc:
        error = describe_error(exc)
        ledger_id, applied_at = _record_failure(conn, attempt, settings, error, started)
        return ApplyResult(
            status=Status.FAILED,
            ledger_id=ledger_id,
            applied_at=applied_at,
            error=error,
            db_ms=_elapsed_ms(started),
        )
    if isinstance(result, ledger.LedgerRow):  # found under the lock: nothing ran
        status = Status.CONFLICT if result.schema_hash != attempt.schema_hash else Status.NOOP
        return _found(status, result, started)
    return replace(result, db_ms=_elapsed_ms(started))


def _apply_locked(
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    create_ledger: bool,
    before_commit: Callable[[], None] | None,
) -> ApplyResult | ledger.LedgerRow:
    """The body of the apply's transaction; return the version's row if it is applied already."""
    target = settings.target_schema
    _set_local(conn, "lock_timeout", f"{settings.lock_wait_ms}ms")
    conn.execute(_TAKE_LOCK, [advisory_lock_key(target)])
    _set_local(conn, "lock_timeout", f"{settings.lock_timeout_ms}ms")
    _set_local(conn, "statement_timeout", f"{settings.statement_timeout_ms}ms")
    if create_ledger:
        ledger.ensure_ledger(conn, target)
    existing = ledger.find_applied(conn, target, attempt.schema.version)
    if existing is not None and (existing.schema_hash != attempt.schema_hash or not attempt.force):
        return existing
    tables = [t.name for t in attempt.schema.tables]
    indexes = [i.name for t in attempt.schema.tables for i in t.indexes]
    before = catalog.existing_relations(conn, target, [*tables, *indexes])
    script_started = time.monotonic()
    conn.execute(attempt.script.encode())
    tenant_tables = [t.name for t in attempt.schema.tables if t.tenant_scoped]
    gaps = catalog.tenant_isolation_gaps(conn, target, tenant_tables) if before else []
    created_tables = tuple(name for name in tables if name not in before)
    created_indexes = tuple(name for name in indexes if name not in before)
    row = _ledger_row(
        attempt,
        LedgerStatus.REAPPLIED if existing is not None else LedgerStatus.SUCCESS,
        execution_ms=_elapsed_ms(script_started),
        tables_created=created_tables,
        indexes_created=created_indexes,
    )
    ledger_id, applied_at = ledger.insert_row(conn, target, row)
    if before_commit is not None:
        try:
            before_commit()
        except Exception as exc:
            raise _CallerError() from exc
    return ApplyResult(
        status=Status.APPLIED,
        ledger_id=ledger_id,
        applied_at=applied_at,
        applied_schema_hash=attempt.schema_hash,
        tables_created=created_tables,
        indexes_created=created_indexes,
        existing_tables=tuple(name for name in tables if name in before),
        isolation_gaps=tuple(gaps),
        reapplied=existing is not None,
    )


class _CallerError(Exception):
    """`before_commit` raised (its exception is the `__cause__`)."""


_TAKE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


def _set_local(conn: psycopg.Connection[Any], name: str, value: str) -> None:
    """Set a parameter for the rest of the current transaction (`SET LOCAL`)."""
    conn.execute("SELECT set_config(%s, %s, true)", [name, value])


def _found(status: Status, row: ledger.LedgerRow, started: float) -> ApplyResult:
    """The result of finding the version applied already: a noop or a conflict."""
    return ApplyResult(
        status=status,
        ledger_id=row.id,
        applied_at=row.applied_at,
        applied_schema_hash=row.schema_hash,
        db_ms=_elapsed_ms(started),
    )


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
    row = _ledger_row(
        attempt, LedgerStatus.FAILED, execution_ms=_elapsed_ms(started), error_message=error
    )
    try:
        with conn.transaction():
            ledger.ensure_ledger(conn, settings.target_schema)
            return ledger.insert_row(conn, settings.target_schema, row)
    except psycopg.Error:
        return None, None


def _ledger_row(
    attempt: Attempt,
    status: LedgerStatus,
    *,
    execution_ms: int,
    error_message: str | None = None,
    tables_created: tuple[str, ...] = (),
    indexes_created: tuple[str, ...] = (),
) -> ledger.NewLedgerRow:
    schema = attempt.schema
    metadata: dict[str, Any] = {
        "table_count": len(schema.tables),
        "tables": [t.name for t in schema.tables],
        "indexes": [i.name for t in schema.tables for i in t.indexes],
        "workflow_run_id": attempt.workflow_run_id,
        "force_apply": attempt.force,
    }
    if status != LedgerStatus.FAILED:
        metadata["tables_created"] = list(tables_created)
        metadata["indexes_created"] = list(indexes_created)
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
        metadata=metadata,
        error_message=error_message,
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
