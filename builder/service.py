"""The builder service: input envelope in, output envelope out.

`run_schema_builder` is the one entry point that the webhook, the admin and the management
commands call. It validates and normalizes, renders and parser-checks the SQL, and (unless
`dry_run`) applies it through `builder.apply`, which records every attempt in the ledger. An
apply of a payload not planned before checks the first eighth of its SQL up front and the rest
while those statements run (`ddl.render_migration`'s `defer_check`, `apply.PendingCheck`); no
statement reaches the target before it has passed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg

from builder import apply as applying
from builder.contract import (
    HTTP_STATUS,
    Envelope,
    idempotency_key,
    output_envelope,
    parse_envelope,
)
from builder.ddl import Migration, render_migration
from builder.errors import SchemaValidationError, UnsafeSQLError, ValidationIssue
from builder.ledger import LEDGER_TABLE
from builder.normalize import normalize_schema, schema_hash
from builder.request_json import canonical_dumps
from builder.spec import Schema

logger = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
RESERVED_TABLE_NAMES = frozenset({LEDGER_TABLE})


@dataclass(frozen=True)
class Outcome:
    """The result of one request: the output envelope plus what the caller layers store."""

    status: str
    http_status: int
    response: dict[str, Any]
    envelope: Envelope
    schema: Schema | None = None
    schema_hash: str | None = None
    idempotency_key: str | None = None
    migration: Migration | None = None
    validation_errors: list[dict[str, str]] = field(default_factory=list)
    migration_log_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A validated request with its normalized schema and parser-checked SQL.

    Only `migration.checked` of the statements are checked if it was planned with `defer_check`
    (an apply checks the rest before it sends them).
    """

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
    """`prepare` for an envelope already parsed with `parse_envelope`."""
    return _prepare(envelope, target_schema, _plan_key(envelope, target_schema))


def _prepare(
    envelope: Envelope, target_schema: str, key: _PlanKey | None, *, defer_check: bool = False
) -> Prepared | Rejected:
    """Validate and plan; with `defer_check`, the SQL may be only partly checked (`_run`)."""
    issues = list(envelope.issues)
    plan: _Plan | None = None
    if envelope.payload is not None:
        try:
            plan = _plan(envelope.payload, target_schema, key, defer_check)
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
"""How many recently planned payloads `prepare` keeps (successful ones only)."""

PLAN_CACHE_MAX_PAYLOAD = 256 * 1024
"""Payloads whose canonical JSON is longer than this are planned every time, not cached."""

_PlanKey = tuple[str, str]
_plans: OrderedDict[_PlanKey, _Plan] = OrderedDict()
# (inputs_hash, target schema) -> the plan cache's key. The inputs hash is the hash of the
# request's canonical JSON, payload included, so it stands for the payload: a repeated request
# finds its key here instead of encoding its payload again.
_plan_keys: OrderedDict[tuple[str, str], _PlanKey | None] = OrderedDict()
_plans_lock = threading.Lock()


def _plan_key(envelope: Envelope, target_schema: str) -> _PlanKey | None:
    """Return the plan cache's key for the envelope's payload (None: too large to be cached)."""
    request = (envelope.inputs_hash, target_schema)
    with _plans_lock:
        if request in _plan_keys:
            _plan_keys.move_to_end(request)
            return _plan_keys[request]
    text = canonical_dumps(_plan_input(envelope.payload))
    key = (target_schema, text) if len(text) <= PLAN_CACHE_MAX_PAYLOAD else None
    with _plans_lock:
        _plan_keys[request] = key
        if len(_plan_keys) > PLAN_CACHE_SIZE:
            _plan_keys.popitem(last=False)
    return key


def _is_planned(key: _PlanKey | None) -> bool:
    """Tell whether the plan of `key` is in the cache (it may be evicted before it is used)."""
    with _plans_lock:
        return key is not None and key in _plans


def _plan(
    payload: object, target_schema: str, key: _PlanKey | None, defer_check: bool = False
) -> _Plan:
    """Normalize, hash and render `payload`; raise SchemaValidationError if it is invalid.

    Services retry: the same payload arrives again and again and is answered `noop`, and
    normalizing and parser-checking it is most of such a request's cost. The result depends
    only on the payload and the target schema, and `Schema` and `Migration` are immutable, so
    recent successful plans are kept in a small LRU keyed by the payload's canonical JSON.
    The execution flags are not part of the plan: an apply reuses the plan of its preview.
    Only a plan whose SQL is fully checked is kept: with `defer_check` (see
    `ddl.render_migration`), `_RestCheck` keeps it once the rest is checked.
    """
    if key is not None:
        with _plans_lock:
            plan = _plans.get(key)
            if plan is not None:
                _plans.move_to_end(key)
                return plan
    schema = normalize_schema(payload)
    issues = _reserved_name_issues(schema)
    if issues:
        raise SchemaValidationError(issues)
    # render_migration checks the statements with the PostgreSQL parser (builder.sqlcheck).
    migration = render_migration(schema, target_schema=target_schema, defer_check=defer_check)
    plan = _Plan(schema, schema_hash(schema), migration)
    if migration.fully_checked:
        _keep_plan(key, plan)
    return plan


def _keep_plan(key: _PlanKey | None, plan: _Plan) -> None:
    if key is not None:
        with _plans_lock:
            _plans[key] = plan
            if len(_plans) > PLAN_CACHE_SIZE:
                _plans.popitem(last=False)


class _RestCheck:
    """The parser check of the statements of a plan that `render_migration` left unchecked.

    Called by the apply (`PendingCheck.run`) while the checked statements run, or afterwards
    by `_run` if the apply did not get that far; the plan is kept in the cache once it passed.
    """

    def __init__(self, prepared: Prepared, key: _PlanKey | None) -> None:
        self._prepared = prepared
        self._key = key
        self.done = False

    def __call__(self) -> None:
        prepared = self._prepared
        migration = prepared.migration.check_rest()
        self.done = True
        _keep_plan(self._key, _Plan(prepared.schema, prepared.schema_hash, migration))


EXECUTION_FLAGS = ("dry_run", "force_apply")
"""Payload keys that say how to run a plan, not what it is: left out of the plan cache's key."""


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
    with _plans_lock:
        _plans.clear()
        _plan_keys.clear()


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


def run_schema_builder(
    raw: object,
    conn: psycopg.Connection[Any] | None,
    *,
    settings: applying.ApplySettings | None = None,
    emit: EventSink | None = None,
    before_commit: Callable[[Prepared], None] | None = None,
) -> Outcome:
    """Handle one request envelope end to end and return its Outcome.

    `conn` is an autocommit connection to the target database; it may be None only for a
    request that turns out to be blocked or a `dry_run` preview, which never write to the
    target (a blocked request may have read its ledger and taken its lock: see `_read_ahead`).
    `before_commit` is called once, with the prepared request (its schema and SQL), while its
    script runs and before it commits (see `builder.apply.apply_attempt`); never for blocked,
    preview, noop and conflict answers.
    """
    settings = settings or applying.ApplySettings()
    started = time.monotonic()
    envelope = parse_envelope(raw)
    plan_key = _plan_key(envelope, settings.target_schema)
    # A request planned before needs no read ahead: there is nothing to overlap it with.
    read_ahead = None if _is_planned(plan_key) else _read_ahead(conn, envelope, settings)
    try:
        return _run(envelope, plan_key, conn, settings, emit, before_commit, read_ahead, started)
    finally:
        if read_ahead is not None:
            read_ahead.wait()  # the connection is free again before it goes back to its owner


def _read_ahead(
    conn: psycopg.Connection[Any] | None, envelope: Envelope, settings: applying.ApplySettings
) -> applying.ReadAhead | None:
    """Start the ledger reads of a request that may apply, before it is planned.

    They may take the target's lock (see `builder.apply.ReadAhead`). The caller's
    `schema_version` is read before validation: a version that validation changes or refuses
    costs needless reads, and the apply then reads again.
    """
    version = _raw_version(envelope)
    if conn is None or not version or envelope.dry_run or envelope.force_apply:
        return None
    return applying.ReadAhead(conn, settings, version)


def _run(
    envelope: Envelope,
    plan_key: _PlanKey | None,
    conn: psycopg.Connection[Any] | None,
    settings: applying.ApplySettings,
    emit: EventSink | None,
    before_commit: Callable[[Prepared], None] | None,
    read_ahead: applying.ReadAhead | None,
    started: float,
) -> Outcome:
    # An apply checks most of a new plan's SQL while its first statements run (PendingCheck).
    defer_check = conn is not None and not envelope.dry_run
    try:
        prepared = _prepare(envelope, settings.target_schema, plan_key, defer_check=defer_check)
    except UnsafeSQLError as exc:
        # A generated statement failed the parser check: a builder bug; nothing was run.
        logger.exception("generated SQL failed the parser check")
        return _unsafe_sql(envelope, str(exc), started)
    if isinstance(prepared, Rejected):
        return _blocked(prepared.envelope, prepared.issues, started)
    if prepared.envelope.dry_run:
        return _preview(prepared, started)
    if conn is None:
        raise ValueError("a connection to the target database is needed to apply")
    on_commit = None if before_commit is None else functools.partial(before_commit, prepared)
    rest = None if prepared.migration.fully_checked else _RestCheck(prepared, plan_key)
    try:
        result = applying.apply_attempt(
            conn,
            _attempt(prepared, rest),
            settings,
            before_commit=on_commit,
            read_ahead=read_ahead,
        )
    except applying.ScriptRefused as exc:
        logger.exception("generated SQL failed the parser check")
        return _refused(prepared, exc, started)
    if rest is not None and not rest.done and result.status != applying.FAILED:
        # A noop or conflict: nothing ran, but the plan is kept only once all of it is checked.
        try:
            rest()
        except UnsafeSQLError as exc:
            logger.exception("generated SQL failed the parser check")
            return _unsafe_sql(envelope, str(exc), started)
    warnings = _warnings(result)
    if result.status == applying.APPLIED and emit is not None:
        warnings.extend(_emit_applied(emit, prepared, result))
    return _finished(prepared, result, warnings, started)


def _attempt(prepared: Prepared, rest: _RestCheck | None = None) -> applying.Attempt:
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
        pending_check=(
            None if rest is None else applying.PendingCheck(migration.checked_length(), rest)
        ),
    )


def _blocked(envelope: Envelope, issues: list[ValidationIssue], started: float) -> Outcome:
    errors = [i.to_dict() for i in issues]
    response = output_envelope(
        envelope,
        status="blocked",
        summary=f"Validation failed: {len(errors)} error(s); nothing was executed.",
        latency_ms=_elapsed_ms(started),
        primary_outputs={"schema_version": _raw_version(envelope), "warnings": []},
        result_extra={"validation_errors": errors},
    )
    return Outcome(
        status="blocked",
        http_status=HTTP_STATUS["blocked"],
        response=response,
        envelope=envelope,
        validation_errors=errors,
    )


def _unsafe_sql(envelope: Envelope, error: str, started: float) -> Outcome:
    response = output_envelope(
        envelope,
        status="failed",
        summary="Internal error: the generated SQL failed the parser check; nothing was executed.",
        latency_ms=_elapsed_ms(started),
        primary_outputs={"schema_version": _raw_version(envelope), "warnings": []},
    )
    return Outcome(
        status="failed",
        http_status=HTTP_STATUS["failed"],
        response=response,
        envelope=envelope,
        error=error,
    )


def _refused(prepared: Prepared, refused: applying.ScriptRefused, started: float) -> Outcome:
    """The end of the script failed the parser check after its start ran (rolled back)."""
    ledger_id = refused.ledger_id
    response = output_envelope(
        prepared.envelope,
        status="failed",
        summary=(
            "Internal error: the generated SQL failed the parser check; the part of it that "
            "had run was rolled back, and nothing was applied."
        ),
        latency_ms=_elapsed_ms(started),
        primary_outputs=_applying_outputs(prepared, ledger_id, []),
        data_written=_ledger_written(ledger_id, "failed"),
    )
    return _outcome(prepared, "failed", response, migration_log_id=ledger_id, error=str(refused))


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


def _ledger_written(ledger_id: str | None, status: str) -> list[dict[str, Any]]:
    """`audit.data_written` for the ledger row `ledger_id` (none if it could not be written)."""
    if ledger_id is None:
        return []
    return [{"table": LEDGER_TABLE, "record_id": ledger_id, "status": status}]


def _preview(prepared: Prepared, started: float) -> Outcome:
    schema, migration = prepared.schema, prepared.migration
    primary = {
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
    response = output_envelope(
        prepared.envelope,
        status="preview",
        summary=(
            f"Preview of schema v{schema.version}: {len(schema.tables)} tables, "
            f"{len(migration.statements)} statements; nothing was executed."
        ),
        latency_ms=_elapsed_ms(started),
        primary_outputs=primary,
    )
    return _outcome(prepared, "preview", response)


def _finished(
    prepared: Prepared, result: applying.ApplyResult, warnings: list[str], started: float
) -> Outcome:
    version = prepared.schema.version
    primary = _applying_outputs(prepared, result.ledger_id, warnings)
    extra: dict[str, Any] = {}
    applied_at = _iso(result.applied_at)
    if result.status == applying.APPLIED:
        primary["tables_created"] = len(result.tables_created)
        primary["indexes_created"] = len(result.indexes_created)
        primary["reapplied"] = result.reapplied
        verb = "Re-applied" if result.reapplied else "Applied"
        summary = (
            f"{verb} schema v{version}: {len(prepared.schema.tables)} tables "
            f"({len(result.tables_created)} created)."
        )
    elif result.status == applying.NOOP:
        extra["already_applied_at"] = applied_at
        summary = (
            f"Schema v{version} with this exact definition was already applied at {applied_at}."
        )
    elif result.status == applying.CONFLICT:
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
    if result.status in (applying.NOOP, applying.CONFLICT):
        primary["tables_created"] = 0
        primary["indexes_created"] = 0
    ran = result.status in (applying.APPLIED, applying.FAILED)
    written = _ledger_written(result.ledger_id, _ledger_status(result)) if ran else []
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


def _outcome(prepared: Prepared, status: str, response: dict[str, Any], **extra: Any) -> Outcome:
    return Outcome(
        status=status,
        http_status=HTTP_STATUS[status],
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
    # CREATE TABLE IF NOT EXISTS leaves an existing table as it is; until the catalog diff is
    # built, say so instead of letting the caller believe the columns were changed.
    return [
        f"Table {name!r} already existed; its columns were left unchanged "
        "(comparing existing tables with the schema is not built yet)."
        for name in result.existing_tables
    ]


def _emit_applied(emit: EventSink, prepared: Prepared, result: applying.ApplyResult) -> list[str]:
    event = {
        "event_type": "schema_migration_applied",
        "workflow_name": "WF106",
        "workflow_run_id": prepared.envelope.workflow_run_id,
        "tenant_id": prepared.envelope.tenant_id,
        "schema_version": prepared.schema.version,
        "schema_hash": prepared.schema_hash,
        "table_count": len(prepared.schema.tables),
        "migration_log_id": result.ledger_id,
        "reapplied": result.reapplied,
        "occurred_at": _iso(result.applied_at),
    }
    try:
        emit(event)
    except Exception:  # the migration is committed; a lost event must not turn it into an error
        logger.exception("emitting schema_migration_applied failed")
        return ["The schema_migration_applied event could not be recorded."]
    return []


def _ledger_status(result: applying.ApplyResult) -> str:
    if result.status == applying.FAILED:
        return "failed"
    return "reapplied" if result.reapplied else "success"


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
