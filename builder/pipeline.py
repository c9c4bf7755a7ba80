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

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

import psycopg
from cachetools import LRUCache, cached

from builder.db import apply as applying
from builder.db import introspect, locks
from builder.db.ledger import LEDGER_TABLE
from builder.errors import SchemaValidationError, UnsafeSQLError, ValidationIssue
from builder.evolve.plan import Plan, catalog_names, make_plan, tables_needing_rows
from builder.evolve.risk import Risk, Verdict, gate
from builder.request.body import canonical_dumps
from builder.request.envelope import (
    REVIEW_PROFILE,
    WORKFLOW_NAME,
    Envelope,
    idempotency_key,
    output_envelope,
    parse_envelope,
)
from builder.schema.limits import DEFAULT_LIMITS, Limits, limit_issues, statement_issues
from builder.schema.names import UPDATED_AT_FUNCTION
from builder.schema.normalize import normalize_schema, schema_hash
from builder.schema.spec import Schema
from builder.sql import squawk
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
    plan: Plan | None = None
    # The target connection broke and the target could not be reached again: what became of
    # the attempt is to be settled from the ledger (`migration_log_id` is the row to look for).
    unrecorded: bool = False

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
    # The id of the ledger row of the apply in progress (set for `before_commit`).
    ledger_id: str | None = None


@dataclass(frozen=True)
class Rejected:
    """A request that failed validation, with every issue found."""

    envelope: Envelope
    issues: list[ValidationIssue]


def prepare(
    raw: object, *, target_schema: str = "public", limits: Limits = DEFAULT_LIMITS
) -> Prepared | Rejected:
    """Validate `raw` (within `limits`) and render its SQL, or return every validation issue."""
    return prepare_envelope(parse_envelope(raw), target_schema=target_schema, limits=limits)


def prepare_envelope(
    envelope: Envelope, *, target_schema: str = "public", limits: Limits = DEFAULT_LIMITS
) -> Prepared | Rejected:
    """`prepare` for an envelope already parsed with `parse_envelope`.

    Raise `UnsafeSQLError` if a generated statement fails the parser check (a builder bug).
    """
    issues = list(envelope.issues)
    plan: _Plan | None = None
    if envelope.payload is not None:
        try:
            plan = _plan(envelope.payload, target_schema, limits)
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

PLAN_CACHE: LRUCache[tuple[str, str, Limits], _Plan] = LRUCache(maxsize=PLAN_CACHE_SIZE)
"""The recent plans, by (canonical JSON of the payload, target schema, limits): read it, never
write."""


def _plan(payload: object, target_schema: str, limits: Limits) -> _Plan:
    """Normalize, hash and render `payload`; raise SchemaValidationError if it is invalid.

    Services retry: the same payload arrives again and again and is answered `noop`, and
    normalizing and parser-checking it is most of such a request's work. A plan depends only
    on the payload (without its execution flags), the target schema and the limits it was
    checked against (a payload within some limits may be over lower ones), and `Schema` and
    `Migration` are immutable, so recent successful plans are kept, keyed by the payload's
    canonical JSON; an apply reuses the plan of its `dry_run` preview.
    """
    text = canonical_dumps(_plan_input(payload))
    if len(text) > PLAN_CACHE_MAX_PAYLOAD:
        return _make_plan(payload, target_schema, limits)
    return _cached_plan(text, payload, target_schema, limits)


@cached(
    cache=PLAN_CACHE,
    key=lambda text, payload, target_schema, limits: (text, target_schema, limits),
    lock=threading.Lock(),
)
def _cached_plan(text: str, payload: object, target_schema: str, limits: Limits) -> _Plan:
    return _make_plan(payload, target_schema, limits)


def _make_plan(payload: object, target_schema: str, limits: Limits) -> _Plan:
    schema = normalize_schema(payload)
    # Tables, columns and indexes are counted before rendering: a payload over a limit is not
    # rendered at all.
    issues = _reserved_name_issues(schema) + limit_issues(schema, limits)
    if issues:
        raise SchemaValidationError(issues)
    # render_migration checks every statement with the PostgreSQL parser (builder.sql.check).
    migration = render_migration(schema, target_schema=target_schema)
    issues = statement_issues(len(migration.statements), limits)
    if issues:
        raise SchemaValidationError(issues)
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
    ] + [
        ValidationIssue(
            path=f"payload.drop_tables[{index}]",
            code="reserved_name",
            message=f"The table {name!r} is the migration ledger; it is never dropped.",
        )
        for index, name in enumerate(schema.drop_tables)
        if name in RESERVED_TABLE_NAMES
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
    before_script: Callable[[Prepared], None] | None = None,
    hold: bool = False,
    account: str | None = None,
) -> Outcome:
    """Handle one request envelope end to end and return its Outcome.

    `conn` is an autocommit connection to the target database, or a `Lender` that is asked for
    one only once the request is valid. The plan is made against the target's catalog: a
    `dry_run` reads it without any lock and answers the plan; otherwise the apply plans under
    its lock and the risk gate decides (`builder.evolve.risk`): applied, held for approval
    (`pending_approval`: always when `hold` is true, as for an operator's draft), or blocked.
    With `conn` None, a `dry_run` or a held request is planned against an empty database.
    `emit` receives the events of the answer (`schema_migration_applied`,
    `schema_migration_failed` for a failure on the ledger, `schema_migration_pending_approval`).
    `before_commit` is called once, with the prepared request (its schema and the plan's SQL),
    after the plan ran and before the target commits (see `builder.db.apply.apply_attempt`);
    never for blocked, preview, held, noop and conflict answers. `before_script` is called
    likewise just before the plan's statements run.
    `account` is the authenticated account that sent the request, recorded as
    the ledger's `applied_by` (the caller's `context.actor_id` is kept beside it as claimed).
    """
    settings = settings or applying.ApplySettings()
    started = time.monotonic()
    envelope = parse_envelope(raw)
    try:
        prepared = prepare_envelope(
            envelope, target_schema=settings.target_schema, limits=settings.limits
        )
    except UnsafeSQLError as exc:
        # A generated statement failed the parser check: a builder bug; nothing was run.
        logger.exception("generated SQL failed the parser check")
        return _unsafe_sql(envelope, str(exc), started)
    if isinstance(prepared, Rejected):
        return _blocked(prepared.envelope, prepared.issues, started)
    held = hold or envelope.validation_profile == REVIEW_PROFILE
    if conn is None:
        plan = offline_plan(prepared, settings.target_schema)
        if envelope.dry_run:
            return _preview(prepared, plan, started)
        if held:
            return _held(prepared, plan, None, emit, started)
        raise ValueError("a connection to the target database is needed to apply")
    apply = partial(
        apply_prepared,
        prepared,
        settings=settings,
        emit=emit,
        before_commit=before_commit,
        before_script=before_script,
        started=started,
        hold=hold,
        account=account,
    )
    if isinstance(conn, psycopg.Connection):
        return _against_target(prepared, conn, settings, apply, started)
    with conn() as lent:
        return _against_target(prepared, lent, settings, partial(apply, reconnect=conn), started)


def _against_target(
    prepared: Prepared,
    conn: psycopg.Connection[Any],
    settings: applying.ApplySettings,
    apply: Callable[[psycopg.Connection[Any]], Outcome],
    started: float,
) -> Outcome:
    if prepared.envelope.dry_run:
        plan = plan_against(conn, prepared.schema, settings.target_schema)
        return _preview(prepared, plan, started)
    return apply(conn)


def offline_plan(prepared: Prepared, target_schema: str = "public") -> Plan:
    """The plan of `prepared` against an empty database (its SQL is the prepared migration)."""
    catalog = introspect.Catalog(schema=target_schema)
    return make_plan(prepared.schema, catalog, occupied=frozenset(), check=False)


def plan_against(conn: psycopg.Connection[Any], schema: Schema, target_schema: str) -> Plan:
    """Read the target's catalog (no lock) and plan `schema` against it.

    What `schema_diff`, a `dry_run` and the admin's preview show; an apply plans again under
    its lock.
    """
    live = introspect.read_catalog(
        conn, target_schema, catalog_names(schema), functions=[UPDATED_AT_FUNCTION]
    )
    occupied = introspect.tables_with_rows(conn, target_schema, tables_needing_rows(schema, live))
    return make_plan(schema, live, occupied=occupied)


def preview_verdict(prepared: Prepared, plan: Plan, *, hold: bool = False) -> Verdict:
    """What the risk gate would decide about `plan` for this request."""
    envelope = prepared.envelope
    return gate(
        plan.risk,
        blockers=len(plan.blockers),
        profile=envelope.validation_profile,
        allow_destructive=prepared.schema.allow_destructive,
        hold=hold,
    )


def apply_prepared(
    prepared: Prepared,
    conn: psycopg.Connection[Any],
    *,
    settings: applying.ApplySettings | None = None,
    emit: EventSink | None = None,
    before_commit: Callable[[Prepared], None] | None = None,
    before_script: Callable[[Prepared], None] | None = None,
    started: float | None = None,
    hold: bool = False,
    approved_checksum: str | None = None,
    account: str | None = None,
    approved_by: str | None = None,
    reconnect: applying.Reconnect | None = None,
) -> Outcome:
    """Plan `prepared` against the target under its lock and apply it if the gate lets it.

    The same last stage as `run_schema_builder`'s, with the same `emit`, `before_commit`,
    `before_script` and
    `account`. `approved_checksum` is the checksum of a plan an approver (`approved_by`)
    accepted: it is applied whatever its risk, if the plan made under the lock is still exactly
    that one (otherwise `conflict`). `reconnect` lends a fresh target connection if `conn`
    breaks (see `builder.db.apply.apply_attempt`).
    """
    settings = settings or applying.ApplySettings()
    started = time.monotonic() if started is None else started

    def on_commit(plan: Plan, ledger_id: str) -> None:
        if before_commit is not None:
            before_commit(replace(prepared, migration=plan.migration, ledger_id=ledger_id))

    result = applying.apply_attempt(
        conn,
        replace(
            _attempt(prepared, hold=hold, approved_checksum=approved_checksum),
            account=account,
            approved_by=approved_by,
        ),
        settings,
        before_commit=None if before_commit is None else on_commit,
        before_script=None
        if before_script is None
        else lambda plan: before_script(replace(prepared, migration=plan.migration)),
        reconnect=reconnect,
    )
    if result.status == Status.PENDING_APPROVAL:
        assert result.plan is not None
        return _held(prepared, result.plan, result.verdict, emit, started)
    if result.status == Status.BLOCKED:
        assert result.plan is not None and result.verdict is not None
        return _gate_blocked(prepared, result.plan, result.verdict, started)
    warnings = _warnings(result, approved=approved_checksum is not None)
    if emit is not None and result.status == Status.APPLIED:
        warnings.extend(_emit(emit, _event("schema_migration_applied", prepared, result)))
    elif emit is not None and result.status == Status.FAILED and not result.unrecorded:
        warnings.extend(_emit(emit, _event("schema_migration_failed", prepared, result)))
    return _finished(prepared, result, warnings, started)


def _attempt(
    prepared: Prepared, *, hold: bool = False, approved_checksum: str | None = None
) -> applying.Attempt:
    envelope = prepared.envelope
    return applying.Attempt(
        schema=prepared.schema,
        schema_hash=prepared.schema_hash,
        idempotency_key=prepared.idempotency_key,
        tenant_id=envelope.tenant_id,
        actor_id=envelope.actor_id,
        workflow_run_id=envelope.workflow_run_id,
        force=envelope.force_apply,
        profile=envelope.validation_profile,
        hold=hold,
        approved=approved_checksum is not None,
        expected_checksum=approved_checksum,
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


def _preview(prepared: Prepared, plan: Plan, started: float) -> Outcome:
    schema, migration = prepared.schema, plan.migration
    verdict = preview_verdict(prepared, plan)
    response = output_envelope(
        prepared.envelope,
        status=Status.PREVIEW,
        summary=(
            f"Preview of schema v{schema.version}: {len(plan.operations)} operations, "
            f"{len(migration.statements)} statements, risk {plan.risk}; nothing was executed."
        ),
        latency_ms=_elapsed_ms(started),
        primary_outputs={
            **_plan_outputs(prepared, plan),
            "decision": str(verdict.decision),
            "squawk": squawk.report(plan.transaction_statements, plan.after_commit_statements),
        },
    )
    return _outcome(prepared, Status.PREVIEW, response, plan=plan)


def _held(
    prepared: Prepared,
    plan: Plan,
    verdict: Verdict | None,
    emit: EventSink | None,
    started: float,
) -> Outcome:
    """A request held for an approver: its plan is answered, nothing runs."""
    schema = prepared.schema
    warnings = (
        [] if emit is None else _emit(emit, _event("schema_migration_pending_approval", prepared))
    )
    why = "" if verdict is None else f" ({verdict.reason})"
    response = output_envelope(
        prepared.envelope,
        status=Status.PENDING_APPROVAL,
        summary=(
            f"Schema v{schema.version} ({len(schema.tables)} tables, risk {plan.risk}) waits "
            f"for an approver{why}; nothing was executed."
        ),
        latency_ms=_elapsed_ms(started),
        primary_outputs={**_plan_outputs(prepared, plan), "warnings": warnings},
    )
    return _outcome(prepared, Status.PENDING_APPROVAL, response, plan=plan)


def _gate_blocked(prepared: Prepared, plan: Plan, verdict: Verdict, started: float) -> Outcome:
    """A plan the risk gate refuses (a blocker, destruction the payload does not allow, or more
    locks than the target can spare: `builder.db.locks`)."""
    issues = [
        ValidationIssue(
            path=f"payload.tables[{_table_index(prepared.schema, op.table)}]"
            if _table_index(prepared.schema, op.table) is not None
            else "payload",
            code=str(op.rule or "plan_not_applicable"),
            message=op.blocker or "",
        )
        for op in plan.blockers
    ]
    if verdict.code == locks.TOO_MANY_LOCKS:
        # Nothing of the plan can run as one transaction; its blockers show once it is split.
        issues = [ValidationIssue("payload.tables", verdict.code, verdict.reason)]
    elif not issues:
        issues = [
            ValidationIssue(
                path="payload.allow_destructive",
                code=verdict.code or "destructive_not_allowed",
                message=verdict.reason
                + " Destructive: "
                + "; ".join(op.description for op in plan.operations if op.risk == "destructive"),
            )
        ]
    errors = [i.to_dict() for i in issues]
    response = output_envelope(
        prepared.envelope,
        status=Status.BLOCKED,
        summary=f"The plan is blocked: {verdict.reason}",
        latency_ms=_elapsed_ms(started),
        primary_outputs=_plan_outputs(prepared, plan),
        result_extra={"validation_errors": errors},
    )
    return _outcome(prepared, Status.BLOCKED, response, plan=plan, validation_errors=errors)


def _table_index(schema: Schema, name: str) -> int | None:
    return next((i for i, t in enumerate(schema.tables) if t.name == name), None)


def _plan_outputs(prepared: Prepared, plan: Plan) -> dict[str, Any]:
    """The primary outputs that describe a plan: its operations, SQL and risk report."""
    migration = plan.migration
    return {
        **_counts(prepared),
        "schema_hash": prepared.schema_hash,
        "idempotency_key": prepared.idempotency_key,
        "checksum": migration.checksum,
        "statement_count": len(migration.statements),
        "sql": migration.script,
        "plan": [op.to_dict() for op in plan.operations],
        "risk": plan.report(),
        "warnings": [],
    }


def _finished(
    prepared: Prepared, result: applying.ApplyResult, warnings: list[str], started: float
) -> Outcome:
    version = prepared.schema.version
    primary = _applying_outputs(prepared, result.ledger_id, warnings)
    extra: dict[str, Any] = {}
    applied_at = iso_utc(result.applied_at)
    if result.plan is not None and result.status in (Status.APPLIED, Status.FAILED):
        primary["plan"] = [op.to_dict() for op in result.plan.operations]
        primary["risk"] = result.plan.report()
    if result.verification is not None:
        primary["verification"] = result.verification
    if result.steps:
        primary["steps"] = list(result.steps)
    if result.status == Status.APPLIED:
        primary["tables_created"] = len(result.tables_created)
        primary["indexes_created"] = len(result.indexes_created)
        primary["reapplied"] = result.reapplied
        verb = "Re-applied" if result.reapplied else "Applied"
        operations = 0 if result.plan is None else len(result.plan.operations)
        summary = (
            f"{verb} schema v{version}: {len(prepared.schema.tables)} tables "
            f"({len(result.tables_created)} created), {operations} operations."
        )
    elif result.status == Status.NOOP:
        extra["already_applied_at"] = applied_at
        summary = (
            f"Schema v{version} with this exact definition was already applied at {applied_at}."
        )
    elif result.status == Status.CONFLICT and result.plan is not None:
        extra["error"] = result.error
        primary["plan"] = [op.to_dict() for op in result.plan.operations]
        summary = f"Schema v{version} was not applied: {result.error}"
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
    elif result.unrecorded:
        extra["error"] = result.error
        primary["migration_log_id"] = None
        summary = (
            f"The connection to the target database broke while applying schema v{version}, "
            "and the target could not be reached again: whether it was applied is settled from "
            "its ledger once it is reachable (manage.py reconcile_submissions). Sending the "
            "same request again is safe."
        )
    else:
        extra["error"] = result.error
        summary = f"Applying schema v{version} failed and was rolled back."
    if result.status in (Status.NOOP, Status.CONFLICT):
        primary["tables_created"] = 0
        primary["indexes_created"] = 0
    ran = result.status in (Status.APPLIED, Status.FAILED) and not result.unrecorded
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
        prepared,
        result.status,
        response,
        plan=result.plan,
        migration_log_id=result.ledger_id,
        error=result.error,
        unrecorded=result.unrecorded,
    )


def _outcome(
    prepared: Prepared,
    status: Status,
    response: dict[str, Any],
    plan: Plan | None = None,
    **extra: Any,
) -> Outcome:
    return Outcome(
        status=status,
        response=response,
        envelope=prepared.envelope,
        schema=prepared.schema,
        schema_hash=prepared.schema_hash,
        idempotency_key=prepared.idempotency_key,
        migration=prepared.migration if plan is None else plan.migration,
        plan=plan,
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


def _warnings(result: applying.ApplyResult, *, approved: bool = False) -> list[str]:
    warnings = list(result.isolation_gaps)
    if result.plan is not None:
        warnings.extend(result.plan.notes)
        # What the profile let through without an approver is said, never done silently.
        warnings.extend(
            f"Applied without review ({op.rule}): "
            + "; ".join(filter(None, [op.description, op.reason]))
            + "."
            for op in result.plan.operations
            if op.risk != Risk.SAFE and not approved
        )
    if result.status == Status.APPLIED and result.error:
        warnings.append(result.error)
    if result.verification is not None and not result.verification["ok"]:
        warnings.append(
            "Verification found differences between the database and the schema: "
            + "; ".join(result.verification["differences"])
        )
    return warnings


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
    if result is None:
        event["migration_log_id"] = None
        event["occurred_at"] = iso_utc(datetime.now(UTC))
        return event
    event["migration_log_id"] = result.ledger_id
    event["occurred_at"] = iso_utc(result.applied_at or datetime.now(UTC))
    if result.status == Status.FAILED:
        event["error"] = result.error
    else:
        event["reapplied"] = result.reapplied
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


def iso_utc(value: datetime | None) -> str | None:
    """`value` in ISO 8601, UTC, with a `Z`: the form of every time in answers and events."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _elapsed_ms(since: float) -> int:
    return round((time.monotonic() - since) * 1000)
