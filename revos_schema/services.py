"""The Django side of the builder: settings, the target connection, and stored submissions.

Views, admin actions and management commands call `submit_envelope`: it runs the builder
(`builder.pipeline.run_schema_builder`) and stores the request and its outcome as a
`SchemaSubmission` with the ORM. No builder logic lives here.
"""

from __future__ import annotations

import atexit
import getpass
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import JSONField, Value
from django.utils import timezone
from psycopg_pool import ConnectionPool

from builder.db.apply import ApplySettings
from builder.errors import ValidationIssue
from builder.pipeline import Outcome, Prepared, Rejected, prepare, run_schema_builder
from builder.schema.limits import Limits
from builder.status import Status
from revos_schema import delivery
from revos_schema import events as recording
from revos_schema.models import SchemaEvent, SchemaPlan, SchemaSubmission


def builder_settings() -> ApplySettings:
    """Return the builder's apply settings, with its limits, from Django settings."""
    return ApplySettings(
        target_schema=settings.WF106_TARGET_SCHEMA,
        lock_timeout_ms=settings.WF106_LOCK_TIMEOUT_MS,
        statement_timeout_ms=settings.WF106_STATEMENT_TIMEOUT_MS,
        limits=Limits(
            tables=settings.WF106_MAX_TABLES,
            columns_per_table=settings.WF106_MAX_COLUMNS_PER_TABLE,
            columns=settings.WF106_MAX_COLUMNS,
            indexes_per_table=settings.WF106_MAX_INDEXES_PER_TABLE,
            indexes=settings.WF106_MAX_INDEXES,
            statements=settings.WF106_MAX_STATEMENTS,
        ),
        max_lock_share=settings.WF106_MAX_LOCK_SHARE,
    )


def prepare_request(raw: object) -> Prepared | Rejected:
    """Validate and render a request as the service is configured (target schema, limits)."""
    configured = builder_settings()
    return prepare(raw, target_schema=configured.target_schema, limits=configured.limits)


_DJANGO_ONLY_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "assume_role", "pool", "cursor_factory"}
)


def target_conninfo() -> str:
    """Return a libpq conninfo string for the target database (the test one under pytest)."""
    config = connections["target"].settings_dict
    # The URL's libpq parameters (sslmode, application_name, ...) as Django keeps them; the
    # options that only Django's backend understands are left out.
    options = {
        key: str(value)
        for key, value in (config.get("OPTIONS") or {}).items()
        if key not in _DJANGO_ONLY_OPTIONS and isinstance(value, str | int)
    }
    params = {
        **options,
        "dbname": config.get("NAME"),
        "user": config.get("USER"),
        "password": config.get("PASSWORD"),
        "host": config.get("HOST"),
        "port": str(config.get("PORT") or ""),
        # A host that does not answer (not one that refuses) would otherwise hold each new
        # connection for the operating system's TCP timeout; libpq takes whole seconds, >= 2.
        "connect_timeout": str(max(2, math.ceil(settings.WF106_TARGET_POOL_TIMEOUT_S))),
    }
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v})


# The builder runs its own transactions on the target (BEGIN, the advisory lock, the script,
# COMMIT), so it gets plain psycopg connections from a pool of its own rather than Django's
# `target` connection, which a test (or a caller) may hold inside `atomic()`.
_pools: dict[str, ConnectionPool[psycopg.Connection[Any]]] = {}
_pools_lock = threading.Lock()


def _pool() -> ConnectionPool[psycopg.Connection[Any]]:
    """Return the process's pool of autocommit connections to the target database."""
    conninfo = target_conninfo()
    with _pools_lock:
        pool = _pools.get(conninfo)
        if pool is None:
            pool = ConnectionPool(
                conninfo,
                kwargs={"autocommit": True},
                min_size=1,
                max_size=settings.WF106_TARGET_POOL_SIZE,
                max_idle=300,
                # A connection that died while idle (server restart) is replaced, not lent.
                check=ConnectionPool.check_connection,
                name="wf106-target",
                open=True,
            )
            _pools[conninfo] = pool
        return pool


def close_target_pools() -> None:
    """Close every pooled target connection (at exit, and before a test database is dropped)."""
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


atexit.register(close_target_pools)


@contextmanager
def target_connection() -> Iterator[psycopg.Connection[Any]]:
    """Lend an autocommit connection to the target database for one request."""
    with _pool().connection(timeout=settings.WF106_TARGET_POOL_TIMEOUT_S) as conn:
        yield conn


class OutcomeNotStored(Exception):
    """The builder finished the request, but storing its outcome failed (the cause says why).

    The submission is left as it was stored before (`received`, with its SQL, for a request that
    wrote to the target); what happened to the target is in its migration ledger.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(f"the {outcome.status} outcome of a request could not be stored")
        self.outcome = outcome


def submit_envelope(
    raw: object, *, source: str, actor: str = "", user: Any = None, hold: bool = False
) -> tuple[Outcome, SchemaSubmission]:
    """Run the builder on the request, store it as a `SchemaSubmission`, return both.

    A request that writes to the target is stored as `received`, with its plan, just before its
    script runs (the builder's `before_script`), and given the id of its ledger row before the
    target commits (`before_commit`): an attempt is on record even if this process dies in the
    middle of it, and a change committed to the target is on record with its ledger row even if
    this process dies before storing the outcome (`reconcile` settles both). The outcome then
    updates that row, in one transaction with the events the builder emitted (the
    `schema_migration_applied` event of an apply): an event is on record exactly when its
    outcome is. Blocked, preview, held, noop and conflict answers never write to the target and
    are stored once, in their final state. If the target database cannot be reached, the request
    is stored as `failed` (503) and the error re-raised.

    The request is held for an approver (`pending_approval`) when `hold` is true (an operator's
    draft), when the setting `WF106_REQUIRE_APPROVAL` is on, or when its profile is `review`.
    `user` is the account that sent it (its approver must be another one).
    """
    submission = SchemaSubmission(
        source=source,
        actor=actor,
        envelope=_json(raw),
        status=SchemaSubmission.Status.RECEIVED,
        submitted_by=user if getattr(user, "is_authenticated", False) else None,
    )

    def record_start(prepared: Prepared) -> None:
        # Under way: if this process dies in the middle of the script, the attempt is still
        # on record, and reconciliation writes it to the ledger as interrupted.
        with transaction.atomic():
            _set_plan(submission, prepared)
            submission.save(force_insert=True)

    def record_attempt(prepared: Prepared) -> None:
        # The ledger row the target commits with this attempt, if it commits.
        submission.migration_log_id = prepared.ledger_id
        SchemaSubmission.objects.filter(pk=submission.pk).update(
            migration_log_id=prepared.ledger_id, updated_at=timezone.now()
        )

    events: list[dict[str, Any]] = []
    try:
        # The target is reached only by a valid request (a preview and a held one are planned
        # against it too): an invalid request does not wait for an unreachable target.
        outcome = run_schema_builder(
            raw,
            target_connection,
            settings=builder_settings(),
            emit=events.append,
            before_commit=record_attempt,
            before_script=record_start,
            hold=hold or settings.WF106_REQUIRE_APPROVAL,
            account=account_name(user, source),
        )
    except psycopg.OperationalError as exc:
        store_unavailable(submission, exc)
        raise
    try:
        recorded = store_outcome(submission, outcome, events)
    except Exception as exc:
        raise OutcomeNotStored(outcome) from exc
    outcome = with_deliveries(outcome, submission, recorded)
    if outcome.status in (Status.APPLIED, Status.NOOP) and outcome.idempotency_key:
        # The same request again: an earlier try interrupted after its COMMIT is settled now.
        from revos_schema import reconcile

        reconcile.settle_committed(idempotency_key=outcome.idempotency_key)
    return outcome, submission


def account_name(user: Any, source: str) -> str:
    """The account that sent a request, as the ledger's `applied_by` records it.

    The authenticated user of the webhook or the admin; for the command line, which has no
    login, the operating system's user (`cli:<name>`). Never the caller's `context.actor_id`,
    which is only a claim.
    """
    if getattr(user, "is_authenticated", False):
        return str(user.get_username())
    if source == SchemaSubmission.Source.CLI:
        return f"cli:{getpass.getuser()}"
    return str(source)


def submitter_account(submission: SchemaSubmission) -> str:
    """The account that sent a stored submission (for the ledger row of its approval)."""
    if submission.submitted_by is not None:
        return str(submission.submitted_by.get_username())
    return str(submission.source)


def store_unreadable(
    issue: ValidationIssue, response: dict[str, Any], *, source: str, actor: str = ""
) -> SchemaSubmission:
    """Store a request whose body could not be read as JSON, as `blocked` (400), without it.

    The body (not JSON, too large, or holding what PostgreSQL cannot store) is not kept: the
    submission records who sent it, why it was refused, and the answer `response`.
    """
    return SchemaSubmission.objects.create(
        source=source,
        actor=actor,
        envelope=_json(None),
        status=Status.BLOCKED,
        http_status=Status.BLOCKED.http_status,
        validation_errors=[issue.to_dict()],
        response=response,
    )


# The fields an outcome sets on a submission stored as `received` before the target committed.
OUTCOME_FIELDS = (
    "status",
    "http_status",
    "response",
    "validation_errors",
    "error_message",
    "migration_log_id",
    "updated_at",
)


def _json(value: object) -> object:
    """The value of a JSONField: a JSON `null` request is stored as JSON null, not SQL NULL."""
    return Value(None, JSONField()) if value is None else value


def _set_plan(submission: SchemaSubmission, planned: Prepared | Outcome) -> None:
    """Set what the builder made of the request, and the plan (stored once) it references."""
    envelope = planned.envelope
    submission.tenant_id = envelope.tenant_id
    submission.actor = submission.actor or (envelope.actor_id or "")
    if planned.schema is None:
        return
    submission.schema_version = planned.schema.version
    submission.schema_hash = planned.schema_hash or ""
    submission.idempotency_key = planned.idempotency_key or ""
    script = "" if planned.migration is None else planned.migration.script
    digest = SchemaPlan.digest_of(submission.schema_hash, script)
    # Most requests repeat a stored plan (a retry, a noop): look for it without reading it.
    if not SchemaPlan.objects.filter(digest=digest).exists():
        plan = SchemaPlan(
            digest=digest, normalized_schema=planned.schema.to_dict(), generated_sql=script
        )
        SchemaPlan.objects.bulk_create([plan], ignore_conflicts=True)  # another may race us
    submission.plan_id = digest


def store_outcome(
    submission: SchemaSubmission, outcome: Outcome, events: list[dict[str, Any]]
) -> list[SchemaEvent]:
    """Store the outcome and its events in one transaction; return the events recorded.

    A submission stored as `received` is updated (DatabaseError if its row is gone) unless it
    was settled in between (by a retry of the same request, or a reconciliation): then nothing
    is stored, since that record already tells the same truth. Any other request is stored here
    for the first time. An `unrecorded` outcome (the target could not be reached again after
    its connection broke) stays `received`, with its reason, for a reconciliation to settle.
    """
    submission.status = SchemaSubmission.Status.RECEIVED if outcome.unrecorded else outcome.status
    submission.http_status = outcome.http_status
    submission.response = outcome.response
    submission.validation_errors = outcome.validation_errors
    submission.error_message = outcome.error or ""
    submission.migration_log_id = outcome.migration_log_id
    # One row alone needs no transaction of its own; the outcome and its events share one.
    with transaction.atomic() if events else nullcontext():
        if submission._state.adding:
            _set_plan(submission, outcome)
            submission.save(force_insert=True)
        elif not _update_received(submission):
            return []
        return recording.record_emitted(submission, events) if events else []


def with_deliveries(
    outcome: Outcome, submission: SchemaSubmission, recorded: list[SchemaEvent]
) -> Outcome:
    """Deliver the events just recorded; the outcome's answer lists the attempts made.

    The stored answer is updated to match, so that it stays the answer that was given.
    """
    response = deliveries_noted(submission, outcome.response, recorded)
    return outcome if response is outcome.response else replace(outcome, response=response)


def deliveries_noted(
    submission: SchemaSubmission, response: dict[str, Any], recorded: list[SchemaEvent]
) -> dict[str, Any]:
    """Attempt the delivery of `recorded`; return `response` with the attempts made in it."""
    calls = delivery.deliver_now(recorded)
    if not calls:
        return response
    audit = response["audit"]
    response = {**response, "audit": {**audit, "external_calls": audit["external_calls"] + calls}}
    submission.response = response
    SchemaSubmission.objects.filter(pk=submission.pk).update(response=response)
    return response


def _update_received(submission: SchemaSubmission) -> bool:
    """Store the outcome fields of a `received` submission; False if it is no longer received."""
    values = {name: getattr(submission, name) for name in OUTCOME_FIELDS if name != "updated_at"}
    updated = SchemaSubmission.objects.filter(
        pk=submission.pk, status=SchemaSubmission.Status.RECEIVED
    ).update(**values, updated_at=timezone.now())
    if updated == 1:
        return True
    status = SchemaSubmission.objects.filter(pk=submission.pk).values_list("status", flat=True)
    if status.first() in (None, SchemaSubmission.Status.RECEIVED):
        raise DatabaseError(f"the outcome of the submission {submission.pk} was not stored")
    return False


def store_unavailable(submission: SchemaSubmission, exc: psycopg.OperationalError) -> None:
    """Record that the target could not be reached.

    A submission already stored as `received` had its attempt under way: whether that committed
    is for the ledger to tell, so it stays `received`, with the reason, for `reconcile`.
    """
    if not submission._state.adding:
        SchemaSubmission.objects.filter(
            pk=submission.pk, status=SchemaSubmission.Status.RECEIVED
        ).update(error_message=f"target database unavailable: {exc}", updated_at=timezone.now())
        return
    submission.status = Status.FAILED
    submission.http_status = 503
    submission.error_message = f"target database unavailable: {exc}"
    submission.save(force_insert=True)  # the target failed before the attempt started
