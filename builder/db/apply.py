"""Apply a rendered migration to the target database, recording every attempt in the ledger.

An apply is a straight line, like Django's schema editor inside `transaction.atomic()`:

1. Without any lock, one read of the ledger: a version already applied with the same hash is a
   noop, answered at once (the common case of a service that retries).
2. One transaction: wait at most `lock_wait_ms` for the target's advisory lock (so two
   requests cannot both apply, and two first applies cannot race on creating the ledger); set
   `lock_timeout` and `statement_timeout`; create the ledger if it is missing; read the
   version's row again (noop or conflict); read the catalog of the tables the schema names and
   plan against it (`builder.evolve.plan`): under the lock, so that two versions changing the
   same table plan one after the other; let the risk gate decide (`builder.evolve.risk`): a plan
   that is held or blocked ends here and nothing runs; run the plan's statements; if tables
   existed, read what in them lets tenants reach each other's data
   (`catalog.tenant_isolation_gaps`); insert the ledger row; call the caller's `before_commit`;
   commit. Either all of it commits or none of it does.
3. After COMMIT, outside the transaction and one at a time: the plan's concurrent index builds
   and constraint validations; a failure there runs the operation's cleanup (an index left
   invalid is dropped). Then the catalog is read back and compared with the schema
   (`verification`); the steps and the verification are written to the ledger row, which says
   `failed` if a step failed (the version can then be sent again to finish it).
4. On a database error in the transaction: it is rolled back (the target is exactly as
   before), and a `failed` row with the error is recorded in a transaction of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from builder.db import catalog, introspect, ledger, locks
from builder.errors import CallerFailed
from builder.evolve.plan import Plan, catalog_names, make_plan, tables_needing_rows
from builder.evolve.risk import Decision, Verdict, gate
from builder.evolve.verify import verify
from builder.request.envelope import SAFE_PROFILE
from builder.schema.limits import DEFAULT_LIMITS, Limits
from builder.schema.names import UPDATED_AT_FUNCTION
from builder.schema.spec import Schema
from builder.status import LedgerStatus, Status


@dataclass(frozen=True)
class ApplySettings:
    """Where and how carefully to apply.

    The timeouts fit a busy production database: DDL that cannot get its lock within
    `lock_timeout_ms` fails instead of queueing every other query behind it.
    `lock_wait_ms` bounds the wait for another apply of the same target to finish.
    `limits` bound what one version may describe (`builder.schema.limits`, checked before
    anything reaches the target); `max_lock_share` is the largest share of the target's shared
    lock table that one apply may hold (`builder.db.locks`).
    """

    target_schema: str = "public"
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 120_000
    lock_wait_ms: int = 60_000
    limits: Limits = DEFAULT_LIMITS
    max_lock_share: float = 0.3


@dataclass(frozen=True)
class Attempt:
    """One request to bring the target to `schema`.

    `profile`, `hold` and `approved` are the risk gate's inputs (`builder.evolve.risk.gate`).
    `expected_checksum`, for an approved plan, is the checksum of the plan that was approved: if
    the plan made under the lock differs, nothing runs (`Status.CONFLICT`).
    `account` is the authenticated account that sent the request (the ledger's `applied_by`),
    `approved_by` the approver's; `actor_id` is only what the caller claims (`context.actor_id`).
    """

    schema: Schema
    schema_hash: str
    idempotency_key: str
    tenant_id: str | None = None
    actor_id: str | None = None
    workflow_run_id: str | None = None
    force: bool = False
    profile: str = SAFE_PROFILE
    hold: bool = False
    approved: bool = False
    expected_checksum: str | None = None
    account: str | None = None
    approved_by: str | None = None


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
    # The target connection broke and the target could not be reached again: the ledger may
    # lack this attempt (`ledger_id` is then the row its transaction inserted, if it got that
    # far, which is in the ledger exactly if that transaction committed).
    unrecorded: bool = False
    plan: Plan | None = None
    verdict: Verdict | None = None
    steps: tuple[dict[str, Any], ...] = ()
    verification: dict[str, Any] | None = None

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
    before_commit: Callable[[Plan, str], None] | None = None,
    before_script: Callable[[Plan], None] | None = None,
    reconnect: Reconnect | None = None,
) -> ApplyResult:
    """Apply `attempt` on `conn` (autocommit, idle) and record it; never raise for DB errors.

    `before_commit` is called once with the plan and the id of its ledger row, inside the
    transaction, after the plan's statements and its ledger row ran and before the commit: a
    caller records the attempt there, so that a committed change is always on its record too.
    If it raises, the transaction is rolled back, a `failed` ledger row says why, and
    `CallerFailed` is raised from its exception. It is not called for a noop, a conflict, or a
    plan the gate holds or blocks.

    `before_script` is called the same way (and with the same consequences if it raises) just
    before the plan's statements run: a caller records there that the attempt is under way, so
    that one interrupted in the middle of its script is on record too.

    If `conn` breaks (the server restarted, the backend was terminated), `reconnect` lends a
    fresh connection, tried a few times, to learn from the ledger whether the transaction
    committed and to record the failure if it did not (see `_settle_broken`).
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
    backend_pid = conn.info.backend_pid
    planned: list[Plan] = []  # the plan made under the lock, for the record of a failure
    inserted: list[str] = []  # the id of the ledger row the transaction inserted
    try:
        with conn.transaction() as transaction:
            result = _apply_locked(
                conn,
                attempt,
                settings,
                not ledger_found,
                _Hooks(before_script, before_commit),
                planned,
                inserted,
            )
            if isinstance(result, ApplyResult) and result.status != Status.APPLIED:
                raise psycopg.Rollback(transaction)  # held or blocked: nothing is kept
    except _CallerError as failure:
        error = f"rolled back: recording the attempt failed: {failure.__cause__!r}"
        _record_failure(conn, attempt, planned, settings, error, started)
        raise CallerFailed(error) from failure.__cause__
    except psycopg.Error as exc:
        error = describe_error(exc)
        if (conn.closed or conn.broken) and reconnect is not None:
            broken = _Broken(backend_pid, planned, inserted)
            return _settle_broken(reconnect, attempt, settings, broken, error, started)
        ledger_id, applied_at = _record_failure(conn, attempt, planned, settings, error, started)
        return ApplyResult(
            status=Status.FAILED,
            ledger_id=ledger_id,
            applied_at=applied_at,
            error=error,
            db_ms=_elapsed_ms(started),
            plan=planned[0] if planned else None,
        )
    if isinstance(result, ledger.LedgerRow):  # found under the lock: nothing ran
        status = Status.CONFLICT if result.schema_hash != attempt.schema_hash else Status.NOOP
        return _found(status, result, started)
    if result.status == Status.APPLIED:
        result = _after_commit_anywhere(conn, attempt, settings, result, reconnect)
    return replace(result, db_ms=_elapsed_ms(started))


def _apply_locked(
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    create_ledger: bool,
    hooks: _Hooks,
    planned: list[Plan],
    inserted: list[str],
) -> ApplyResult | ledger.LedgerRow:
    """The body of the apply's transaction; return the version's row if it is applied already."""
    target = settings.target_schema
    _set_local(conn, "lock_timeout", f"{settings.lock_wait_ms}ms")
    conn.execute(_TAKE_LOCK, [advisory_lock_key(target)])
    _set_local(conn, "lock_timeout", f"{settings.lock_timeout_ms}ms")
    _set_local(conn, "statement_timeout", f"{settings.statement_timeout_ms}ms")
    if create_ledger:
        ledger.ensure_ledger(conn, target)
    existing_row = ledger.find_applied(conn, target, attempt.schema.version)
    if existing_row is not None and (
        existing_row.schema_hash != attempt.schema_hash or not attempt.force
    ):
        return existing_row
    schema = attempt.schema
    live = introspect.read_catalog(
        conn, target, catalog_names(schema), functions=[UPDATED_AT_FUNCTION]
    )
    occupied = introspect.tables_with_rows(conn, target, tables_needing_rows(schema, live))
    plan = make_plan(schema, live, occupied=occupied)
    planned.append(plan)
    # A plan the server's lock table cannot hold is refused before anything runs.
    verdict = locks.refusal(conn, plan, live, settings.max_lock_share) or gate(
        plan.risk,
        blockers=len(plan.blockers),
        profile=attempt.profile,
        allow_destructive=schema.allow_destructive,
        hold=attempt.hold,
        approved=attempt.approved,
    )
    if verdict.decision != Decision.APPLY:
        status = Status.PENDING_APPROVAL if verdict.decision == Decision.HOLD else Status.BLOCKED
        return ApplyResult(status=status, plan=plan, verdict=verdict)
    if attempt.expected_checksum is not None and plan.migration.checksum != (
        attempt.expected_checksum
    ):
        return ApplyResult(
            status=Status.CONFLICT,
            plan=plan,
            verdict=verdict,
            error="The plan made against the database now differs from the approved plan "
            "(the database changed in between); nothing was executed.",
        )
    if hooks.before_script is not None:
        try:
            hooks.before_script(plan)
        except Exception as exc:
            raise _CallerError() from exc
    script_started = time.monotonic()
    if plan.transaction_statements:
        conn.execute(plan.transaction_script.encode())
    tenant_tables = [t.name for t in schema.tables if t.tenant_scoped]
    existing = [name for name in plan.existing_tables if name in tenant_tables]
    gaps = catalog.tenant_isolation_gaps(conn, target, tenant_tables) if existing else []
    created = _created(schema, plan)
    row = _ledger_row(
        attempt,
        plan,
        LedgerStatus.REAPPLIED if existing_row is not None else LedgerStatus.SUCCESS,
        execution_ms=_elapsed_ms(script_started),
        tables_created=created[0],
        indexes_created=created[1],
    )
    ledger_id, applied_at = ledger.insert_row(conn, target, row)
    inserted.append(ledger_id)
    if hooks.before_commit is not None:
        try:
            hooks.before_commit(plan, ledger_id)
        except Exception as exc:
            raise _CallerError() from exc
    return _applied(
        attempt,
        plan,
        created,
        ledger.LedgerRow(ledger_id, schema.version, attempt.schema_hash, row.status, applied_at),
        isolation_gaps=tuple(gaps),
        verdict=verdict,
    )


def _applied(
    attempt: Attempt,
    plan: Plan,
    created: tuple[tuple[str, ...], tuple[str, ...]],
    row: ledger.LedgerRow,
    *,
    isolation_gaps: tuple[str, ...] = (),
    verdict: Verdict | None = None,
) -> ApplyResult:
    """The result of an apply whose transaction committed with ledger row `row`."""
    return ApplyResult(
        status=Status.APPLIED,
        ledger_id=row.id,
        applied_at=row.applied_at,
        applied_schema_hash=attempt.schema_hash,
        tables_created=created[0],
        indexes_created=created[1],
        existing_tables=plan.existing_tables,
        isolation_gaps=isolation_gaps,
        reapplied=row.status == LedgerStatus.REAPPLIED,
        plan=plan,
        verdict=verdict,
    )


def _on_new_connection(
    reconnect: Reconnect, work: Callable[[psycopg.Connection[Any]], ApplyResult | None]
) -> ApplyResult | None:
    """Run `work` on a new connection until it gives a result, a few times over a few seconds.

    None if the target could not be reached again, or `work` never gave a result.
    """
    for delay in RECONNECT_DELAYS_S:
        time.sleep(delay)
        try:
            with reconnect() as fresh:
                result = work(fresh)
        except psycopg.Error:
            continue  # not reachable yet (a pool timeout is an OperationalError too)
        if result is not None:
            return result
    return None


def _created(schema: Schema, plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tables and indexes the plan creates, in the schema's order."""
    tables = tuple(op.table for op in plan.operations if op.action == "create_table")
    indexes = tuple(i.name for t in schema.tables if t.name in tables for i in t.indexes) + tuple(
        op.subject for op in plan.operations if op.action == "add_index"
    )
    return tables, indexes


Reconnect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
"""Lends a fresh autocommit connection to the target for a `with` block (e.g. a pool's)."""

# Waits before each try to reach the target again after the apply's connection broke.
RECONNECT_DELAYS_S = (0.0, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class _Broken:
    """What is known of an apply whose connection broke: its backend, plan and ledger row."""

    backend_pid: int
    planned: list[Plan]
    inserted: list[str]


def _settle_broken(
    reconnect: Reconnect,
    attempt: Attempt,
    settings: ApplySettings,
    broken: _Broken,
    error: str,
    started: float,
) -> ApplyResult:
    """Settle an apply whose connection broke, on a fresh connection.

    The transaction committed exactly if the ledger row it inserted is there (its old backend,
    if it still exists, is ended first so that the answer cannot change afterwards). A committed
    apply goes on with its steps after COMMIT; an apply that did not commit gets its `failed`
    row. If the target cannot be reached within a few tries, the result is `unrecorded`: the
    caller keeps what it knows for a later reconciliation against the ledger.
    """
    planned = broken.planned
    plan = planned[0] if planned else None
    pending = broken.inserted[0] if broken.inserted else None

    def settle(fresh: psycopg.Connection[Any]) -> ApplyResult | None:
        found = None
        if pending is not None:
            _end_backend(fresh, broken.backend_pid)
            found = ledger.find_row(fresh, settings.target_schema, pending)
        if found is not None and plan is not None:
            committed = _applied(attempt, plan, _created(attempt.schema, plan), found)
            return _after_commit(fresh, attempt, settings, committed)
        note = f"{error}\n(the connection to the target broke; recorded on a new one)"
        ledger_id, applied_at = _record_failure(fresh, attempt, planned, settings, note, started)
        if ledger_id is None:
            return None
        return ApplyResult(
            status=Status.FAILED, ledger_id=ledger_id, applied_at=applied_at, error=error, plan=plan
        )

    settled = _on_new_connection(reconnect, settle)
    if settled is not None:
        return replace(settled, db_ms=_elapsed_ms(started))
    return ApplyResult(
        status=Status.FAILED,
        ledger_id=pending,
        error=error,
        db_ms=_elapsed_ms(started),
        plan=plan,
        unrecorded=True,
    )


def _after_commit_anywhere(
    conn: psycopg.Connection[Any],
    attempt: Attempt,
    settings: ApplySettings,
    result: ApplyResult,
    reconnect: Reconnect | None,
) -> ApplyResult:
    """Run the steps after COMMIT; if the connection breaks, run them again on a new one.

    The transaction has committed, so the answer stays `applied` whatever happens here. On the
    new connection an index that the broken build left invalid is dropped first (its
    operation's cleanup), then every step runs again: each is idempotent. If the target cannot
    be reached again, the result says so in `error`, and the steps are not recorded.
    """
    try:
        return _after_commit(conn, attempt, settings, result)
    except psycopg.Error as exc:
        if not (conn.closed or conn.broken):
            raise
        lost = describe_error(exc)

    def again(fresh: psycopg.Connection[Any]) -> ApplyResult:
        _drop_invalid_indexes(fresh, settings.target_schema, result.plan)
        return _after_commit(fresh, attempt, settings, result)

    finished = None if reconnect is None else _on_new_connection(reconnect, again)
    if finished is not None:
        return finished
    return replace(
        result,
        error=(
            "The transaction committed, but the connection to the target broke after COMMIT "
            f"and its steps after COMMIT could not be completed ({lost}). `schema_verify` "
            "shows what is missing; sending the version again with force_apply completes it."
        ),
    )


def _drop_invalid_indexes(conn: psycopg.Connection[Any], target: str, plan: Plan | None) -> None:
    """Run the cleanup of the plan's operations whose index a broken build left invalid."""
    if plan is None:
        return
    rows = conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT i.indisvalid",
        [target],
    ).fetchall()
    invalid = {row[0] for row in rows}
    for op in plan.operations:
        if op.subject in invalid:
            for statement in op.cleanup:
                conn.execute(statement.encode())


def _end_backend(conn: psycopg.Connection[Any], pid: int) -> None:
    """End backend `pid` if it still runs (the connection broke on the client's side only),
    and wait for it to go, so that whether its transaction committed can no longer change."""
    conn.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = %s", [pid]
    )


def _after_commit(
    conn: psycopg.Connection[Any], attempt: Attempt, settings: ApplySettings, result: ApplyResult
) -> ApplyResult:
    """Run the plan's steps that cannot run in a transaction, verify, and record both."""
    plan = result.plan
    assert plan is not None and result.ledger_id is not None
    target = settings.target_schema
    steps: list[dict[str, Any]] = []
    failures: list[str] = []
    if plan.after_commit_statements:
        _set_session(conn, settings)
        try:
            for op in plan.operations:
                _run_steps(conn, op.after_commit, op.cleanup, steps, failures)
        finally:
            _reset_session(conn)
    verification = verify(conn, attempt.schema, target)
    status = LedgerStatus.FAILED if failures else result.ledger_status
    error = None
    if failures:
        error = (
            f"The transaction committed; after COMMIT {len(failures)} step(s) failed and were "
            "cleaned up: " + " | ".join(failures)
        )
    metadata = {"steps": steps, "verification": verification}
    try:
        ledger.update_after_commit(
            conn, target, result.ledger_id, status=status, error_message=error, metadata=metadata
        )
    except psycopg.Error as exc:
        error = (error + "\n" if error else "") + (
            f"Recording the steps on the ledger row failed: {describe_error(exc)}"
        )
    return replace(
        result,
        status=Status.FAILED if failures else result.status,
        error=error,
        steps=tuple(steps),
        verification=verification,
    )


def _run_steps(
    conn: psycopg.Connection[Any],
    statements: tuple[str, ...],
    cleanup: tuple[str, ...],
    steps: list[dict[str, Any]],
    failures: list[str],
) -> None:
    """Run one operation's after-COMMIT statements in order; on a failure, its cleanup."""
    for statement in statements:
        started = time.monotonic()
        try:
            conn.execute(statement.encode())
        except psycopg.Error as exc:
            error = describe_error(exc)
            steps.append({"sql": statement, "status": "failed", "error": error})
            failures.append(f"{statement.splitlines()[0]}: {error.splitlines()[0]}")
            for undo in cleanup:
                try:
                    conn.execute(undo.encode())
                    steps.append({"sql": undo, "status": "ran", "cleanup": True})
                except psycopg.Error as undo_exc:
                    steps.append(
                        {
                            "sql": undo,
                            "status": "failed",
                            "cleanup": True,
                            "error": describe_error(undo_exc),
                        }
                    )
            skipped = statements[statements.index(statement) + 1 :]
            steps.extend({"sql": s, "status": "skipped"} for s in skipped)
            return
        steps.append({"sql": statement, "status": "ran", "ms": _elapsed_ms(started)})


def _set_session(conn: psycopg.Connection[Any], settings: ApplySettings) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, false)", [f"{settings.lock_timeout_ms}ms"])
    conn.execute(
        "SELECT set_config('statement_timeout', %s, false)", [f"{settings.statement_timeout_ms}ms"]
    )


def _reset_session(conn: psycopg.Connection[Any]) -> None:
    if not (conn.closed or conn.broken):
        conn.execute("RESET lock_timeout")
        conn.execute("RESET statement_timeout")


@dataclass(frozen=True)
class _Hooks:
    """The caller's callbacks inside the apply's transaction (see `apply_attempt`)."""

    before_script: Callable[[Plan], None] | None
    before_commit: Callable[[Plan, str], None] | None


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
    planned: list[Plan],
    settings: ApplySettings,
    error: str,
    started: float,
) -> tuple[str | None, datetime | None]:
    """Record a `failed` row in its own transaction; return (None, None) if even that fails."""
    if conn.closed or conn.broken:
        return None, None
    row = _ledger_row(
        attempt,
        planned[0] if planned else None,
        LedgerStatus.FAILED,
        execution_ms=_elapsed_ms(started),
        error_message=error,
    )
    try:
        with conn.transaction():
            ledger.ensure_ledger(conn, settings.target_schema)
            return ledger.insert_row(conn, settings.target_schema, row)
    except psycopg.Error:
        return None, None


def _ledger_row(
    attempt: Attempt,
    plan: Plan | None,
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
        "schema": schema.to_dict(),
        "claimed_actor_id": attempt.actor_id,
    }
    if attempt.approved_by is not None:
        metadata["approved_by"] = attempt.approved_by
    if plan is not None:
        metadata["plan"] = [
            {"action": op.action, "table": op.table, "subject": op.subject, "risk": str(op.risk)}
            for op in plan.operations
        ]
        metadata["risk"] = str(plan.risk)
    if status != LedgerStatus.FAILED:
        metadata["tables_created"] = list(tables_created)
        metadata["indexes_created"] = list(indexes_created)
    return ledger.NewLedgerRow(
        version=schema.version,
        description=schema.description,
        applied_by=attempt.account,
        checksum=plan.migration.checksum if plan is not None else "",
        status=status,
        sql_script=plan.migration.script if plan is not None else "",
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
