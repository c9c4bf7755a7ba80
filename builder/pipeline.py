"""The builder's pipeline: input envelope in, output envelope out.

`run_schema_builder` is the one entry point that the webhook, the admin and the management
commands call. Its stages follow the folders of this package:

1. `request`: read the envelope and fill its defaults;
2. `schema`: validate and normalize the tables into a frozen `Schema`, and hash it;
3. `sql`: render the migration and check every statement with PostgreSQL's parser;
4. `db`: unless `dry_run`, apply it in one transaction with its ledger row.

`prepare` runs stages 1 to 3 only (the preview command and the admin use it).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg
from cachetools import LRUCache, cached

from builder.db import apply as applying
from builder.db.ledger import LEDGER_TABLE
from builder.errors import SchemaValidationError, UnsafeSQLError, ValidationIssue
from builder.request.body import canonical_dumps
from builder.request.envelope import (
    REVIEW_PROFILE,
    WORKFLOW_NAME,
    Envelope,
    idempotency_key,
    output_envelope,
    parse_envelope,
)
from builder.schema.normalize import normalize_schema, schema_hash
from builder.schema.spec import Schema
from builder.sql.render import Migration, render_migration
from builder.status import LedgerStatus, Status

logger = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
RESERVED_TABLE_NAMES = frozenset({LEDGER_TABLE})


@dataclass(frozen=True)
class Outcome:
    """The result of one request: the output envelope plus what the caller layers store."""

    status: Status
    response: dict[str, Any]
    envelope: Envelope
    schema: Schema | None = None
    schema_hash: str | None = None
    idempotency_key: str | None = None
    migration: Migration | None = None
    validation_errors: list[dict[str, str]] = field(default_factory=list)
    migration_log_id: str | None = None
    error: str | None = None

    @property
    def http_status(self) -> int:
        """The HTTP status the answer is sent with."""
        return self.status.http_status


@dataclass(frozen=True)
class Prepared:
    """A validated request with its normalized schema and parser-checked SQL."""

    envelope: Envelope
    schema: Schema
    schema_hash: str
    idempotency_key: str
    migration: Migration


@dataclass(frozen=True)
class Rejected:
    """A request that failed validation, with every issue found."""

    envelope: Envelope
    issues: list[ValidationIssue]


def prepare(raw: object, *, target_schema: str = "public") -> Prepared | Rejected:
    """Validate `raw` and render its SQL, or return every validation issue."""
    return prepare_envelope(parse_envelope(raw), target_schema=target_schema)


def prepare_envelope(envelope: Envelope, *, target_schema: str = "public") -> Prepared | Rejected:
    """`prepare` for an envelope already parsed with `parse_envelope`.

    Raise `UnsafeSQLError` if a generated statement fails the parser check (a builder bug).
    """
    issues = list(envelope.issues)
    plan: _Plan | None = None
    if envelope.payload is not None:
        try:
            plan = _plan(envelope.payload, target_schema)
        except SchemaValidationError as exc:
            issues.extend(exc.issues)
    if plan is None or issues:
        return Rejected(envelope=envelope, issues=issues)
    schema, digest, migration = plan
    return Prepared(
        envelope=envelope,
        schema=schema,
        schema_hash=digest,
        idempotency_key=idempotency_key(envelope.tenant_id, schema.version, digest),
        migration=migration,
    )


class _Plan(NamedTuple):
    schema: Schema
    schema_hash: str
    migration: Migration


PLAN_CACHE_SIZE = 32
"""How many recently planned payloads are kept per process (successful plans only)."""

PLAN_CACHE_MAX_PAYLOAD = 256 * 1024
"""Payloads whose canonical JSON is longer than this are planned every time, not cached."""

EXECUTION_FLAGS = ("dry_run", "force_apply")
"""Payload keys that say how to run a plan, not what it is: left out of the plan cache's key."""

PLAN_CACHE: LRUCache[tuple[str, str], _Plan] = LRUCache(maxsize=PLAN_CACHE_SIZE)
"""The recent plans, by (canonical JSON of the payload, target schema): read it, never write."""


def _plan(payload: object, target_schema: str) -> _Plan:
    """Normalize, hash and render `payload`; raise SchemaValidationError if it is invalid.

    Services retry: the same payload arrives again and again and is answered `noop`, and
    normalizing and parser-checking it is most of such a request's work. A plan depends only
    on the payload (without its execution flags) and the target schema, and `Schema` and
    `Migration` are immutable, so recent successful plans are kept, keyed by the payload's
    canonical JSON; an apply reuses the plan of its `dry_run` preview.
    """
    text = canonical_dumps(_plan_input(payload))
    if len(text) > PLAN_CACHE_MAX_PAYLOAD:
        return _make_plan(payload, target_schema)
    return _cached_plan(text, payload, target_schema)


@cached(
    cache=PLAN_CACHE,
    key=lambda text, payload, target_schema: (text, target_schema),
    lock=threading.Lock(),
)
def _cached_plan(text: str, payload: object, target_schema: str) -> _Plan:
    return _make_plan(payload, target_schema)


def _make_plan(payload: object, target_schema: str) -> _Plan:
    schema = normalize_schema(payload)
    issues = _reserved_name_issues(schema)
    if issues:
        raise SchemaValidationError(issues)
    # render_migration checks every statement with the PostgreSQL parser (builder.sql.check).
    migration = render_migration(schema, target_schema=target_schema)
    return _Plan(schema, schema_hash(schema), migration)


def _plan_input(payload: object) -> object:
    """Return `payload` without its execution flags when they are booleans (or absent).

    A flag of any other type is a validation error: such a payload keeps its flags in the key,
    so that it is normalized (and rejected) instead of finding the plan of a valid payload.
    """
    if not isinstance(payload, dict):
        return payload
    if not all(isinstance(payload.get(flag, False), bool) for flag in EXECUTION_FLAGS):
        return payload
    return {k: v for k, v in payload.items() if k not in EXECUTION_FLAGS}


def clear_plan_cache() -> None:
    """Forget every cached plan (tests, and benchmarks that time planning itself)."""
    _cached_plan.cache_clear()


def _reserved_name_issues(schema: Schema) -> list[ValidationIssue]:
    return [
        ValidationIssue(
            path=f"payload.tables[{index}].name",
            code="reserved_name",
            message=f"The table name {table.name!r} is reserved for the migration ledger.",
        )
        for index, table in enumerate(schema.tables)
        if table.name in RESERVED_TABLE_NAMES
    ]


Lender = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
"""A function that lends a target connection for a `with` block (e.g. a pool's `connection`)."""


def run_schema_builder(
    raw: object,
    conn: psycopg.Connection[Any] | Lender | None,
    *,
    settings: applying.ApplySettings | None = None,
    emit: EventSink | None = None,
    before_commit: Callable[[Prepared], None] | None = None,
    hold: bool = False,
) -> Outcome:
    """Handle one request envelope end to end and return its Outcome.

    `conn` is an autocommit connection to the target database, or a `Lender` that is asked for
    one only when the request is going to be applied; it may be None only for a request that
    turns out to be blocked, a `dry_run` preview, or held, which never touch the target. A
    request is held for approval (`pending_approval`) when `hold` is true or its
    `context.validation_profile` is `review`; `apply_prepared` applies it once approved.
    `emit` receives the events of the answer (`schema_migration_applied`,
    `schema_migration_pending_approval`). `before_commit` is called once, with the prepared
    request (its schema and SQL), after its script ran and before the target commits (see
    `builder.db.apply.apply_attempt`); never for blocked, preview, held, noop and conflict
    answers.
    """
    settings = settings or applying.ApplySettings()
    started = time.monotonic()
    envelope = parse_envelope(raw)
    try:
        prepared = prepare_envelope(envelope, target_schema=settings.target_schema)
    except UnsafeSQLError as exc:
        # A generated statement failed the parser check: a builder bug; nothing was run.
        logger.exception("generated SQL failed the parser check")
        return _unsafe_sql(envelope, str(exc), started)
    if isinstance(prepared, Rejected):
        return _blocked(prepared.envelope, prepared.issues, started)
    if envelope.dry_run:
        return _preview(prepared, started)
    if hold or envelope.validation_profile == REVIEW_PROFILE:
        return _held(prepared, emit, started)
    if conn is None:
        raise ValueError("a connection to the target database is needed to apply")
    if isinstance(conn, psycopg.Connection):
        return apply_prepared(
            prepared,
            conn,
            settings=settings,
            emit=emit,
            before_commit=before_commit,
            started=started,
        )
    with conn() as lent:
        return apply_prepared(
            prepared,
            lent,
            settings=settings,
            emit=emit,
            before_commit=before_commit,
            started=started,
        )


def apply_prepared(
    prepared: Prepared,
    conn: psycopg.Connection[Any],
    *,
    settings: applying.ApplySettings | None = None,
    emit: EventSink | None = None,
    before_commit: Callable[[Prepared], None] | None = None,
    started: float | None = None,
) -> Outcome:
    """Apply a plan made by `prepare` (for example a held request, once approved).

    The same last stage as `run_schema_builder`'s, with the same `emit` and `before_commit`.
    """
    settings = settings or applying.ApplySettings()
    started = time.monotonic() if started is None else started
    on_commit = None if before_commit is None else functools.partial(before_commit, prepared)
    result = applying.apply_attempt(conn, _attempt(prepared), settings, before_commit=on_commit)
    warnings = _warnings(result)
    if result.status == Status.APPLIED and emit is not None:
        warnings.extend(_emit(emit, _event("schema_migration_applied", prepared, result)))
    return _finished(prepared, result, warnings, started)


def _attempt(prepared: Prepared) -> applying.Attempt:
    envelope = prepared.envelope
    migration = prepared.migration
    return applying.Attempt(
        schema=prepared.schema,
        script=migration.script,
        checksum=migration.checksum,
        schema_hash=prepared.schema_hash,
        idempotency_key=prepared.idempotency_key,
        tenant_id=envelope.tenant_id,
        actor_id=envelope.actor_id,
        workflow_run_id=envelope.workflow_run_id,
        force=envelope.force_apply,
    )


def _blocked(envelope: Envelope, issues: list[ValidationIssue], started: float) -> Outcome:
    errors = [i.to_dict() for i in issues]
    response = output_envelope(
        envelope,
        status=Status.BLOCKED,
        summary=f"Validation failed: {len(errors)} error(s); nothing was executed.",
        latency_ms=_elapsed_ms(started),
        primary_outputs={"schema_version": _raw_version(envelope), "warnings": []},
        result_extra={"validation_errors": errors},
    )
    return Outcome(
        status=Status.BLOCKED,
        response=response,
        envelope=envelope,
        validation_errors=errors,
    )


def _unsafe_sql(envelope: Envelope, error: str, started: float) -> Outcome:
    response = output_envelope(
        envelope,
        status=Status.FAILED,
        summary="Internal error: the generated SQL failed the parser check; nothing was executed.",
        latency_ms=_elapsed_ms(started),
        primary_outputs={"schema_version": _raw_version(envelope), "warnings": []},
    )
    return Outcome(
        status=Status.FAILED,
        response=response,
        envelope=envelope,
        error=error,
    )


def _applying_outputs(
    prepared: Prepared, ledger_id: str | None, warnings: list[str]
) -> dict[str, Any]:
    """The primary outputs of a request that reached the target's ledger (not a preview)."""
    return {
        **_counts(prepared),
        "migration_log_id": ledger_id,
        "schema_hash": prepared.schema_hash,
        "idempotency_key": prepared.idempotency_key,
        "warnings": warnings,
    }


def _ledger_written(ledger_id: str | None, status: LedgerStatus) -> list[dict[str, Any]]:
    """`audit.data_written` for the ledger row `ledger_id` (none if it could not be written)."""
    if ledger_id is None:
        return []
    return [{"table": LEDGER_TABLE, "record_id": ledger_id, "status": str(status)}]


def _preview(prepared: Prepared, started: float) -> Outcome:
    schema, migration = prepared.schema, prepared.migration
    response = output_envelope(
        prepared.envelope,
        status=Status.PREVIEW,
        summary=(
            f"Preview of schema v{schema.version}: {len(schema.tables)} tables, "
            f"{len(migration.statements)} statements; nothing was executed."
        ),
        latency_ms=_elapsed_ms(started),
        primary_outputs=_plan_outputs(prepared),
    )
    return _outcome(prepared, Status.PREVIEW, response)


def _held(prepared: Prepared, emit: EventSink | None, started: float) -> Outcome:
    """A request held for an approver: its plan is answered, nothing runs."""
    schema = prepared.schema
    warnings = (
        [] if emit is None else _emit(emit, _event("schema_migration_pending_approval", prepared))
    )
    response = output_envelope(
        prepared.envelope,
        status=Status.PENDING_APPROVAL,
        summary=(
            f"Schema v{schema.version} ({len(schema.tables)} tables) waits for an approver; "
            "nothing was executed."
        ),
        latency_ms=_elapsed_ms(started),
        primary_outputs={**_plan_outputs(prepared), "warnings": warnings},
    )
    return _outcome(prepared, Status.PENDING_APPROVAL, response)


def _plan_outputs(prepared: Prepared) -> dict[str, Any]:
    """The primary outputs that describe a plan: its SQL and what it would create."""
    schema, migration = prepared.schema, prepared.migration
    return {
        **_counts(prepared),
        "schema_hash": prepared.schema_hash,
        "idempotency_key": prepared.idempotency_key,
        "checksum": migration.checksum,
        "statement_count": len(migration.statements),
        "sql": migration.script,
        "plan": [
            {
                "table": t.name,
                "action": "create_table_if_not_exists",
                "columns": [c.name for c in t.columns],
                "indexes": [i.name for i in t.indexes],
                "tenant_scoped": t.tenant_scoped,
            }
            for t in schema.tables
        ],
        "warnings": [],
    }


def _finished(
    prepared: Prepared, result: applying.ApplyResult, warnings: list[str], started: float
) -> Outcome:
    version = prepared.schema.version
    primary = _applying_outputs(prepared, result.ledger_id, warnings)
    extra: dict[str, Any] = {}
    applied_at = _iso(result.applied_at)
    if result.status == Status.APPLIED:
        primary["tables_created"] = len(result.tables_created)
        primary["indexes_created"] = len(result.indexes_created)
        primary["reapplied"] = result.reapplied
        verb = "Re-applied" if result.reapplied else "Applied"
        summary = (
            f"{verb} schema v{version}: {len(prepared.schema.tables)} tables "
            f"({len(result.tables_created)} created)."
        )
    elif result.status == Status.NOOP:
        extra["already_applied_at"] = applied_at
        summary = (
            f"Schema v{version} with this exact definition was already applied at {applied_at}."
        )
    elif result.status == Status.CONFLICT:
        extra["conflict"] = {
            "applied_schema_hash": result.applied_schema_hash,
            "requested_schema_hash": prepared.schema_hash,
            "applied_at": applied_at,
            "migration_log_id": result.ledger_id,
        }
        summary = (
            f"Schema v{version} was already applied with a different definition; "
            "use a new schema_version for changes."
        )
    else:
        extra["error"] = result.error
        summary = f"Applying schema v{version} failed and was rolled back."
    if result.status in (Status.NOOP, Status.CONFLICT):
        primary["tables_created"] = 0
        primary["indexes_created"] = 0
    ran = result.status in (Status.APPLIED, Status.FAILED)
    written = _ledger_written(result.ledger_id, result.ledger_status) if ran else []
    response = output_envelope(
        prepared.envelope,
        status=result.status,
        summary=summary,
        latency_ms=_elapsed_ms(started),
        primary_outputs=primary,
        result_extra=extra,
        data_written=written,
        external_calls=[{"service": "postgresql", "latency_ms": result.db_ms}],
    )
    return _outcome(
        prepared, result.status, response, migration_log_id=result.ledger_id, error=result.error
    )


def _outcome(prepared: Prepared, status: Status, response: dict[str, Any], **extra: Any) -> Outcome:
    return Outcome(
        status=status,
        response=response,
        envelope=prepared.envelope,
        schema=prepared.schema,
        schema_hash=prepared.schema_hash,
        idempotency_key=prepared.idempotency_key,
        migration=prepared.migration,
        **extra,
    )


def _counts(prepared: Prepared) -> dict[str, Any]:
    tables = prepared.schema.tables
    return {
        "schema_version": prepared.schema.version,
        "table_count": len(tables),
        "index_count": sum(len(t.indexes) for t in tables),
        "tables_created": 0,
        "indexes_created": 0,
    }


def _warnings(result: applying.ApplyResult) -> list[str]:
    return [*_existing_table_warnings(result), *result.isolation_gaps]


def _existing_table_warnings(result: applying.ApplyResult) -> list[str]:
    # CREATE TABLE IF NOT EXISTS leaves an existing table as it is; until the catalog diff is
    # built, say so instead of letting the caller believe the columns were changed.
    return [
        f"Table {name!r} already existed; its columns were left unchanged "
        "(comparing existing tables with the schema is not built yet)."
        for name in result.existing_tables
    ]


def _event(
    event_type: str, prepared: Prepared, result: applying.ApplyResult | None = None
) -> dict[str, Any]:
    """An event about `prepared` (and, for an apply, its `result`)."""
    event: dict[str, Any] = {
        "event_type": event_type,
        "workflow_name": WORKFLOW_NAME,
        "workflow_run_id": prepared.envelope.workflow_run_id,
        "tenant_id": prepared.envelope.tenant_id,
        "schema_version": prepared.schema.version,
        "schema_hash": prepared.schema_hash,
        "table_count": len(prepared.schema.tables),
    }
    if result is not None:
        event["migration_log_id"] = result.ledger_id
        event["reapplied"] = result.reapplied
        event["occurred_at"] = _iso(result.applied_at)
    else:
        event["occurred_at"] = _iso(datetime.now(UTC))
    return event


def _emit(emit: EventSink, event: dict[str, Any]) -> list[str]:
    """Hand `event` to the caller; a failure is a warning, never the request's error."""
    try:
        emit(event)
    except Exception:  # an outcome must not turn into an error because its event was lost
        logger.exception("emitting %s failed", event["event_type"])
        return [f"The {event['event_type']} event could not be recorded."]
    return []


def _raw_version(envelope: Envelope) -> str | None:
    payload = envelope.payload
    version = payload.get("schema_version") if isinstance(payload, dict) else None
    # Echo the caller's version only while it is short: a blocked answer stays small.
    return version if isinstance(version, str) and len(version) <= 64 else None


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _elapsed_ms(since: float) -> int:
    return round((time.monotonic() - since) * 1000)
