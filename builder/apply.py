"""Apply a rendered migration to the target database, recording every attempt in the ledger.

One apply is:
1. Without any lock, one read of the ledger: a version already applied with the same hash is a
   noop, answered at once (the common case of a retrying service).
2. One transaction: the advisory lock of the target schema (so two identical requests cannot both
   apply, and two first applies cannot race on creating the ledger), `lock_timeout` and
   `statement_timeout` set locally, the ledger created if missing, the ledger lookup (noop /
   conflict), the DDL script and the `success` ledger row. Either all of it commits or none of
   it does. The caller's `before_commit` (recording the attempt elsewhere) runs while the server
   executes the script, and the transaction commits only after it has returned.
3. On an execution error: that transaction is rolled back (the target is exactly as before) and a
   `failed` row with the error is recorded in a transaction of its own.

Round trips to the target for an apply: the lock-free read; `BEGIN` with the lock and the
ledger read; the script with its ledger row (and, first, the read of which of its tables and
indexes exist already); `COMMIT`. For a payload that has to be planned, the first two run on
another thread while the request is planned (`ReadAhead`). A new plan's script goes in two
messages (`PendingCheck`): its first statements, which passed the parser check, and then the
rest with the ledger row, sent only once the check of the rest (run meanwhile) has passed. If
it does not pass, the rest is never sent, the transaction is rolled back, and a `failed` row
records it (`ScriptRefused`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

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
class PendingCheck:
    """The end of a script that has not passed the parser check yet.

    `script[offset:]` is sent only after `run()` has returned; `run()` raises if that part must
    not run. The apply calls it while the server runs the part before `offset`, so that the
    check of most of a script does not add to the apply's time.
    """

    offset: int
    run: Callable[[], None]


@dataclass(frozen=True)
class Attempt:
    """One request to apply `script` for `schema` (`pending_check`: see `PendingCheck`)."""

    schema: Schema
    script: str
    checksum: str
    schema_hash: str
    idempotency_key: str
    tenant_id: str | None = None
    actor_id: str | None = None
    workflow_run_id: str | None = None
    force: bool = False
    pending_check: PendingCheck | None = None


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


class CallerFailed(Exception):
    """`before_commit` raised: the apply was rolled back and recorded as `failed`.

    The caller's exception is the `__cause__`.
    """


class ScriptRefused(Exception):
    """The attempt's `pending_check` raised while the start of its script ran.

    The transaction was rolled back (the target is as before), and a `failed` ledger row
    records it: `ledger_id` (None if even that could not be written). The check's exception is
    the `__cause__`.
    """

    def __init__(self, error: str, ledger_id: str | None) -> None:
        super().__init__(error)
        self.ledger_id = ledger_id


def apply_attempt(
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    *,
    before_commit: Callable[[], None] | None = None,
    read_ahead: ReadAhead | None = None,
) -> ApplyResult:
    """Apply `attempt` on `conn` (autocommit, idle) and record it; never raise for DB errors.

    `before_commit` is called once when the script is going to be run: under the lock, after
    the ledger said this version is not applied yet, while the server runs the script (on
    another thread of this process), and before the transaction commits. A caller records the
    attempt there, so that a committed change is always on its record too, without adding the
    time of its write to the apply's. If it raises, the transaction is rolled back, a `failed`
    ledger row says why, and `CallerFailed` is raised from its exception. It is not called for a
    noop or a conflict.

    `read_ahead` is the ledger read of this version started on `conn` while the request was
    being planned; it is waited for, and used if it read the right version. It may have begun
    the apply's transaction and taken the lock already (`ReadAhead`); the apply goes on in it.
    """
    ahead = None if read_ahead is None else read_ahead.take(attempt.schema.version)
    locked = None if ahead is None else ahead.locked
    if locked is None and conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("apply_attempt needs an idle connection (no transaction in progress)")
    started = time.monotonic()
    ledger_found = False
    if not attempt.force:
        looked_up = (
            ahead.lookup
            if ahead is not None
            else _read_without_lock(conn, settings.target_schema, attempt.schema.version)
        )
        if looked_up is not None:  # else: decided again, and reported, under the lock below
            ledger_found = looked_up.ledger_found
            existing = looked_up.existing
            if existing is not None and existing.schema_hash == attempt.schema_hash:
                return ApplyResult(
                    status=NOOP,
                    ledger_id=existing.id,
                    applied_at=existing.applied_at,
                    applied_schema_hash=existing.schema_hash,
                    db_ms=_elapsed_ms(started),
                )
    try:
        result = _apply_in_transaction(
            conn,
            attempt,
            settings,
            create_ledger=not ledger_found,
            before_commit=before_commit,
            ahead=ahead,
        )
    except _CallerError as failure:
        error = f"rolled back: recording the attempt failed: {failure.__cause__!r}"
        _record_failure(conn, attempt, settings, error, started)
        raise CallerFailed(error) from failure.__cause__
    except _CheckError as failure:
        error = f"rolled back: the script failed the parser check: {failure.__cause__}"
        ledger_id, _ = _record_failure(conn, attempt, settings, error, started)
        raise ScriptRefused(error, ledger_id) from failure.__cause__
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
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    *,
    create_ledger: bool,
    before_commit: Callable[[], None] | None,
    ahead: _Ahead | None = None,
) -> ApplyResult:
    target = settings.target_schema
    with _transaction(conn):
        if ahead is not None and ahead.error is not None:
            raise ahead.error  # taking the lock ahead failed: reported like any database error
        if ahead is not None and ahead.locked is not None:
            existing = ahead.locked.existing
        else:
            existing = _lock_and_read(
                conn, attempt.schema.version, settings, create_ledger=create_ledger
            )
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
        tables = [t.name for t in attempt.schema.tables]
        indexes = [i.name for t in attempt.schema.tables for i in t.indexes]
        row = _ledger_row(attempt, status, execution_ms=None)
        # One round trip: which of the schema's relations exist already (kept for the ledger
        # row in a transaction-local setting), the script, then its ledger row, which runs only
        # if every statement of the script succeeded and records the server's time for it.
        # With a pending check, two: split where the unchecked part begins, and the first one
        # keeps the time it began in a transaction-local setting, for `execution_ms`.
        pending = attempt.pending_check
        split = len(attempt.script) if pending is None else pending.offset
        first = _existing_relations_sql(target, [*tables, *indexes]).as_bytes(conn)
        last = ledger.insert_row_sql(
            target,
            row,
            more_metadata={
                "tables_created": _created_sql(tables),
                "indexes_created": _created_sql(indexes),
            },
            started=None if pending is None else _STARTED_AT,
        ).as_bytes(conn)
        head, tail = attempt.script[:split].encode(), attempt.script[split:].encode()
        messages: tuple[bytes, bytes | None]
        if pending is None:
            messages = (b";\n".join([first, head, last]), None)
        else:
            started_at = _KEEP_STARTED_AT.as_bytes(conn)
            messages = (b";\n".join([first, started_at, head]), b";\n".join([tail, last]))
        ledger_id, applied_at, existed = _run_script(
            conn, messages, before_commit, None if pending is None else pending.run
        )
        _commit(conn)
    before = set(existed)
    return ApplyResult(
        status=APPLIED,
        ledger_id=ledger_id,
        applied_at=applied_at,
        applied_schema_hash=attempt.schema_hash,
        tables_created=tuple(name for name in tables if name not in before),
        indexes_created=tuple(name for name in indexes if name not in before),
        existing_tables=tuple(name for name in tables if name in before),
        reapplied=existing is not None,
    )


@contextmanager
def _transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Roll back, on the way out, a transaction that the statements inside opened themselves.

    The apply's first statement is `BEGIN` inside its first query (one round trip fewer than
    psycopg's `conn.transaction()`); whatever happens next, the connection leaves this block
    idle: committed by `_commit`, rolled back here, or broken.
    """
    try:
        yield
    finally:
        _end_open_transaction(conn)


def _end_open_transaction(conn: psycopg.Connection[Any]) -> None:
    """Roll back the transaction open on `conn`, if any (a broken connection has none to end)."""
    if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
        conn.execute(b"ROLLBACK")


def _commit(conn: psycopg.Connection[Any]) -> None:
    """Commit the apply's transaction (a function of its own, so that tests can watch it)."""
    conn.execute(b"COMMIT")


class _CallerError(Exception):
    """`before_commit` raised (its exception is the `__cause__`)."""


class _CheckError(Exception):
    """The pending check raised (its exception is the `__cause__`)."""


# Run target queries while the calling thread does other work: an apply's script while the
# attempt is recorded, the lock-free ledger read while the request is planned. psycopg releases
# the GIL while it waits for the server, so the two overlap. A request has at most one task here
# at a time, and no task waits for another; threads are made when needed, at most this many
# (more than gunicorn's threads per worker), and a task beyond them waits for a free one.
_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wf106-target")

_T = TypeVar("_T")


def _on_thread(task: Callable[[], _T]) -> Future[_T]:
    """Start `task` on one of `_THREADS`; return once it has started.

    Waiting for the start hands the GIL to the task's thread, which keeps it until psycopg
    waits for the server: its query is on its way before the caller goes on.
    """
    started = threading.Event()

    def run() -> _T:
        started.set()
        return task()

    future = _THREADS.submit(run)
    started.wait()
    return future


def _run_script(
    conn: psycopg.Connection[Any],
    messages: tuple[bytes, bytes | None],
    before_commit: Callable[[], None] | None,
    check: Callable[[], None] | None,
) -> tuple[str, datetime, list[str]]:
    """Run the script's messages; meanwhile call `check`, then `before_commit`.

    The first message starts with the read of the relations that exist; the last one ends with
    the ledger row. A second message holds the part of the script that `check` checks: it is
    sent only after `check` has returned (while the first one runs, if it still does).
    Return the ledger row's id and time, and the relations that existed before the script.
    """
    first, second = messages
    checked = threading.Event()
    refused = threading.Event()

    def execute() -> tuple[str, datetime, list[str]]:
        with conn.cursor() as cur:
            cur.execute(first)
            existing = cur.set_result(0).fetchone()
            if second is not None:
                checked.wait()
                if refused.is_set():
                    raise _CheckError()
                cur.execute(second)
            ledger_id, applied_at = ledger.inserted_row(cur.set_result(-1).fetchone())
            assert existing is not None  # SELECT set_config(...) always returns one row
            return ledger_id, applied_at, json.loads(existing[0])

    if before_commit is None and check is None:
        return execute()
    running = _on_thread(execute)
    try:
        if check is not None:
            try:
                check()
            except Exception as exc:
                refused.set()  # before `checked`: the unchecked part is never sent
                checked.set()
                with suppress(Exception):  # the first message ends, and nothing follows it
                    running.result()
                raise _CheckError() from exc
        checked.set()
        if before_commit is not None:
            before_commit()
    except _CheckError:
        raise
    except BaseException as exc:  # a worker's timeout too: stop the script before unwinding
        refused.set()
        checked.set()
        if not running.done():
            conn.cancel_safe()
        with suppress(Exception):  # only that it ended matters: the caller's error is reported
            running.result()
        if isinstance(exc, Exception):
            raise _CallerError() from exc
        raise
    return running.result()


@dataclass(frozen=True)
class LedgerLookup:
    """The lock-free read of one version's `success` row (None if there is none)."""

    existing: ledger.LedgerRow | None
    ledger_found: bool


def _read_without_lock(
    conn: psycopg.Connection[Any], target_schema: str, version: str
) -> LedgerLookup | None:
    """Read the version's `success` row without any lock; None if the read failed.

    A `success` row is never removed or changed, so finding one needs no lock; this keeps
    repeated identical requests (the common case for retrying services) cheap. Anything else is
    decided under the advisory lock. One autocommit statement: no transaction to open. A missing
    ledger is not an error (the first apply creates it; the builder never drops it).
    """
    try:
        existing = ledger.find_applied(conn, target_schema, version)
    except psycopg.errors.UndefinedTable:
        return LedgerLookup(None, ledger_found=False)
    except psycopg.Error:
        return None
    return LedgerLookup(existing, ledger_found=True)


@dataclass(frozen=True)
class LockedRead:
    """The version's `success` row as read under the target's lock, in an open transaction."""

    existing: ledger.LedgerRow | None


@dataclass(frozen=True)
class _Ahead:
    """What a `ReadAhead` did: its lock-free read, and the transaction it began, if any."""

    lookup: LedgerLookup | None
    locked: LockedRead | None = None
    error: psycopg.Error | None = None  # taking the lock failed (the transaction is gone)


# How long `ReadAhead.wait` lets an unwanted read finish before it cancels it: a read that is
# not waiting for the lock ends in well under this.
_CANCEL_AFTER_S = 0.05


class ReadAhead:
    """The ledger reads of a version, started on another thread while the request is planned.

    A request that may apply starts it on its target connection as soon as the envelope is
    parsed, with the caller's `schema_version`, and then normalizes, renders and parser-checks
    the schema meanwhile (pglast releases the GIL while it parses). The thread reads the
    version's `success` row without a lock. If there is none and the ledger exists, it goes on
    to begin the apply's transaction, take the target's lock and read the row again under it
    (`_lock_and_read`), and leaves that transaction open for `apply_attempt`. The target is not
    changed in any way before the request has been planned: a missing ledger is created by
    `apply_attempt` itself, and a request found invalid releases the lock by rolling back.

    The connection belongs to the read until `take()` or `wait()` has returned: call one of them
    before anything else uses it, whatever happens to the request; `wait()` also ends a
    transaction that `apply_attempt` did not take over.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], settings: ApplySettings, version: str
    ) -> None:
        self.version = version
        self._conn = conn
        self._unwanted = threading.Event()
        self._future = _on_thread(lambda: _look_ahead(conn, settings, version, self._unwanted))

    def take(self, version: str) -> _Ahead | None:
        """Wait for the reads; return them if they were of `version`, else end them (None)."""
        if version != self.version:
            self.wait()
            return None
        return self._future.result()

    def wait(self) -> None:
        """End the reads, however far they got, and leave the connection idle.

        A read still running after `_CANCEL_AFTER_S` (waiting for the lock that another apply
        holds) is cancelled: a request that is not going to apply does not wait for the lock.
        """
        self._unwanted.set()
        conn = self._conn
        with suppress(Exception):  # only that the connection is free again matters here
            while True:
                try:
                    self._future.result(timeout=_CANCEL_AFTER_S)
                    break
                except TimeoutError:
                    conn.cancel_safe()
        _end_open_transaction(conn)


def _look_ahead(
    conn: psycopg.Connection[Any],
    settings: ApplySettings,
    version: str,
    unwanted: threading.Event,
) -> _Ahead:
    """The work of a `ReadAhead`, on its thread."""
    lookup = _read_without_lock(conn, settings.target_schema, version)
    if lookup is None or lookup.existing is not None or not lookup.ledger_found:
        return _Ahead(lookup)  # nothing to lock for: a noop or conflict, or the apply decides
    if unwanted.is_set():
        return _Ahead(lookup)  # the request will not apply
    try:
        existing = _lock_and_read(conn, version, settings, create_ledger=False)
    except psycopg.Error as exc:
        with suppress(psycopg.Error):
            _end_open_transaction(conn)
        return _Ahead(lookup, error=exc)
    return _Ahead(lookup, locked=LockedRead(existing))


def _lock_and_read(
    conn: psycopg.Connection[Any],
    version: str,
    settings: ApplySettings,
    *,
    create_ledger: bool = True,
) -> ledger.LedgerRow | None:
    """Begin the apply transaction in one round trip; return the version's applied row.

    In order: `BEGIN`; wait at most `lock_wait_ms` for the target's transaction-level advisory
    lock; then set `lock_timeout` and `statement_timeout` for the rest of the transaction;
    create the ledger if it is missing (unless `create_ledger` is false: the caller just read
    it); read the version's successful ledger row. The statements carry their values as
    quoted literals (psycopg's `sql.Literal`) so that they can go as one simple query.
    """
    target = settings.target_schema
    statements = [
        sql.SQL("BEGIN"),
        _set_local_sql("lock_timeout", f"{settings.lock_wait_ms}ms"),
        sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended({}, 0))").format(
            sql.Literal(advisory_lock_key(target))
        ),
        _set_local_sql("lock_timeout", f"{settings.lock_timeout_ms}ms"),
        _set_local_sql("statement_timeout", f"{settings.statement_timeout_ms}ms"),
        *([ledger.ensure_ledger_sql(target)] if create_ledger else []),
        ledger.find_applied_sql(target, version),
    ]
    with conn.cursor() as cur:
        cur.execute(sql.SQL(";\n").join(statements))
        return ledger.ledger_row(cur.set_result(-1).fetchone())


# A transaction-local setting that keeps, for the ledger row at the end of the script message,
# which of the schema's relations existed before the script ran (a JSON array of names).
_EXISTING_SETTING = "wf106.existing_relations"


def _existing_relations_sql(target_schema: str, names: list[str]) -> sql.Composed:
    """Return the statement that reads which of `names` exist in the target schema.

    It answers them as a JSON array and keeps them in `_EXISTING_SETTING` until the transaction
    ends. Lookup by name goes through pg_class's `(relname, relnamespace)` index: a scan of the
    schema's relations would grow with every relation of the database.
    """
    return sql.SQL(
        "SELECT set_config({setting}, coalesce(("
        "SELECT jsonb_agg(c.relname) FROM pg_catalog.pg_class c "
        "WHERE c.relnamespace = "
        "(SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = {schema}) "
        "AND c.relname = ANY({names}::text[]) AND c.relkind IN ('r', 'p', 'i', 'I')"
        "), '[]')::text, true)"
    ).format(
        setting=sql.Literal(_EXISTING_SETTING),
        schema=sql.Literal(target_schema),
        names=sql.Literal(names),
    )


# When a script sent in two messages began (`statement_timestamp()` of the first), kept for
# the ledger row's `execution_ms` in a transaction-local setting.
_STARTED_SETTING = "wf106.script_started"
_KEEP_STARTED_AT = sql.SQL("SELECT set_config({}, statement_timestamp()::text, true)").format(
    sql.Literal(_STARTED_SETTING)
)
_STARTED_AT = sql.SQL("current_setting({})::timestamptz").format(sql.Literal(_STARTED_SETTING))


def _created_sql(names: list[str]) -> sql.Composed:
    """Return a JSON array expression: those of `names` that did not exist before the script."""
    return sql.SQL(
        "(SELECT coalesce(jsonb_agg(u.name ORDER BY u.position), '[]') "
        "FROM unnest({names}::text[]) WITH ORDINALITY AS u(name, position) "
        "WHERE NOT current_setting({setting})::jsonb ? u.name)"
    ).format(names=sql.Literal(names), setting=sql.Literal(_EXISTING_SETTING))


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
