"""The Django side of the builder: settings, the target connection, and stored submissions.

Views, admin actions and management commands call `submit_envelope`; it records the request as a
`SchemaSubmission`, runs the builder service (`builder.service.run_schema_builder`) and stores the
outcome. No builder logic lives here.
"""

from __future__ import annotations

import atexit
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from psycopg import sql
from psycopg_pool import ConnectionPool

from builder.apply import ApplySettings
from builder.errors import ValidationIssue
from builder.service import Outcome, Prepared, run_schema_builder
from revos_schema.db import quiet
from revos_schema.models import SchemaEvent, SchemaPlan, SchemaSubmission


def builder_settings() -> ApplySettings:
    """Return the builder's apply settings from Django settings."""
    return ApplySettings(
        target_schema=settings.WF106_TARGET_SCHEMA,
        lock_timeout_ms=settings.WF106_LOCK_TIMEOUT_MS,
        statement_timeout_ms=settings.WF106_STATEMENT_TIMEOUT_MS,
    )


def target_conninfo() -> str:
    """Return a libpq conninfo string for the target database (the test one under pytest)."""
    config = connections["target"].settings_dict
    params = (
        ("dbname", config.get("NAME")),
        ("user", config.get("USER")),
        ("password", config.get("PASSWORD")),
        ("host", config.get("HOST")),
        ("port", str(config.get("PORT") or "")),
    )
    return _conninfo(params)


@functools.lru_cache(maxsize=8)
def _conninfo(params: tuple[tuple[str, Any], ...]) -> str:
    # Called for every request (to find its pool): make_conninfo parses what it makes.
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params if v})


_pools: dict[str, ConnectionPool[psycopg.Connection[Any]]] = {}
_pools_lock = threading.Lock()


def _pool() -> ConnectionPool[psycopg.Connection[Any]]:
    """Return the process's pool of target connections (connecting costs ~5 ms a request)."""
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
                # A connection that died while idle (server restart) is replaced, not handed out.
                check=_check_connection,
                name="wf106-target",
                open=True,
            )
            _pools[conninfo] = pool
        return pool


def _check_connection(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection it lends: a query only if the connection is not quiet."""
    if not quiet(conn):
        ConnectionPool.check_connection(conn)


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
    raw: object, *, source: str, actor: str = ""
) -> tuple[Outcome, SchemaSubmission]:
    """Run the builder on the request, store it as a `SchemaSubmission`, return both.

    A request that is going to write to the target is stored as `received`, with its SQL, while
    its script runs and before the target commits (the builder's `before_commit`): a change
    committed to the target is on record even if this process dies before storing the outcome.
    The outcome then updates that row, in one transaction with the events the builder emitted
    (the `schema_migration_applied` event of an apply): an event is on record exactly when the
    outcome it belongs to is. Blocked, preview, noop and conflict answers never write to the
    target and are stored once, in their final state. If the target database cannot be reached,
    the request is stored as `failed` and the error re-raised.
    """
    submission = SchemaSubmission(
        source=source, actor=actor, envelope=raw, status=SchemaSubmission.Status.RECEIVED
    )

    def record_attempt(prepared: Prepared) -> None:
        _insert_submission(submission, _record_request(submission, prepared))

    events: list[dict[str, Any]] = []
    try:
        with target_connection() as conn:
            outcome = run_schema_builder(
                raw,
                conn,
                settings=builder_settings(),
                emit=events.append,
                before_commit=record_attempt,
            )
    except psycopg.OperationalError as exc:
        _store_unavailable(submission, exc)
        raise
    try:
        _store_outcome(submission, outcome, events)
    except Exception as exc:
        raise OutcomeNotStored(outcome) from exc
    return outcome, submission


def store_unreadable(
    issue: ValidationIssue, response: dict[str, Any], *, source: str, actor: str = ""
) -> SchemaSubmission:
    """Store a request whose body could not be read as JSON, as `blocked` (400), without it.

    The body (not JSON, too large, or holding what PostgreSQL cannot store) is not kept: the
    submission records who sent it, why it was refused, and the answer `response`.
    """
    submission = SchemaSubmission(
        source=source,
        actor=actor,
        envelope=None,  # stored as JSON null (`_insert_submission`)
        status=SchemaSubmission.Status.BLOCKED,
        http_status=400,
        validation_errors=[issue.to_dict()],
        response=response,
    )
    _insert_submission(submission, None)
    return submission


# What a submission says about the request: written once, with the first row stored.
_REQUEST_FIELDS = frozenset({"id", "created_at", "source", "envelope"})
# What the builder made of it (`_record_request`): known before the target is written, so an
# attempt is on record with its SQL before it runs.
_PLAN_FIELDS = frozenset(
    {
        "actor",
        "tenant_id",
        "schema_version",
        "schema_hash",
        "idempotency_key",
        "plan",
    }
)
# The outcome: the only columns written again when a `received` row is updated.
_OUTCOME_FIELDS = [
    field.name
    for field in SchemaSubmission._meta.concrete_fields
    if field.name not in _REQUEST_FIELDS | _PLAN_FIELDS
]


@dataclass(frozen=True)
class _Plan:
    """A `SchemaPlan` row to store with a submission, unless one with its digest exists."""

    digest: str
    normalized_schema: str  # the builder's canonical JSON text, cast to jsonb by the server
    generated_sql: str


def _record_request(submission: SchemaSubmission, planned: Prepared | Outcome) -> _Plan | None:
    """Set the plan fields (`_PLAN_FIELDS`) from a prepared request or an outcome.

    Return the plan the submission references (None if the request has no normalized schema),
    for `_insert_submission` to store with it. The normalized schema is the JSON text the
    builder made once for its hash (`Schema.canonical_json`), not dumped again.
    """
    envelope = planned.envelope
    submission.tenant_id = envelope.tenant_id
    submission.actor = submission.actor or (envelope.actor_id or "")
    if planned.schema is None:
        return None
    submission.schema_version = planned.schema.version
    submission.schema_hash = planned.schema_hash or ""
    submission.idempotency_key = planned.idempotency_key or ""
    script = "" if planned.migration is None else planned.migration.script
    plan = _Plan(
        SchemaPlan.digest_of(submission.schema_hash, script), planned.schema.canonical_json, script
    )
    submission.plan_id = plan.digest
    return plan


# Digests of plans this process has seen committed: a submission of one of them is inserted
# without the plan's text (quoting ~28 KB into the statement was ~0.5 ms of a noop's CPU).
# Plans are never changed, and one cannot be deleted while a submission references it; if one
# was deleted by hand anyway, the INSERT fails on the foreign key and is sent again with it
# (in autocommit; in a caller's transaction the plan is always sent).
_stored_plans: set[str] = set()
_STORED_PLANS_MAX = 4096


def _insert_submission(submission: SchemaSubmission, plan: _Plan | None) -> None:
    """INSERT the new `submission` (and its plan, if not stored yet) in one statement.

    The server parses and stores a plan only for its first submission (`_insert_sql`); the
    plan's text is not even sent when this process knows it is stored (`_stored_plans`).
    """
    connection = _write_connection()
    values = []
    for field in SchemaSubmission._meta.concrete_fields:
        if field.name == "envelope":  # a JSON `null` request is JSON null, not SQL NULL
            values.append(connection.ops.adapt_json_value(submission.envelope, field.encoder))
        else:
            values.append(_db_value(field, submission, connection))
    if plan is None:
        _execute(connection, _insert_sql(with_plan=False), values)
    elif plan.digest in _stored_plans and not connection.in_atomic_block:
        # In autocommit, the foreign key (deferred, as Django makes it) is checked as the
        # statement commits, so a plan deleted by hand is found here.
        try:
            _execute(connection, _insert_sql(with_plan=False), values)
        except IntegrityError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.ForeignKeyViolation):
                raise
            _stored_plans.discard(plan.digest)  # deleted by hand: stored again with its text
            _insert_submission(submission, plan)
            return
    else:
        plan_values = [plan.digest, plan.normalized_schema, plan.generated_sql]
        _execute(connection, _insert_sql(with_plan=True), plan_values + values)
        transaction.on_commit(lambda: _remember_plan(plan.digest), using=connection.alias)
    submission._state.adding = False
    submission._state.db = connection.alias


def _remember_plan(digest: str) -> None:
    if len(_stored_plans) >= _STORED_PLANS_MAX:
        _stored_plans.clear()
    _stored_plans.add(digest)


@functools.cache
def _insert_sql(*, with_plan: bool) -> str:
    """The statement of `_insert_submission`, written out once from the models' metadata.

    Parameters: the plan's digest, normalized schema and SQL (`with_plan`), then the
    submission's columns. The plan is inserted only if its digest is not stored yet, and then
    nothing of it is parsed or written (`ON CONFLICT` covers a concurrent first insert of the
    same plan). `OFFSET 0` keeps the sent values in a subquery of their own: pulled up into
    the INSERT, the planner would parse the jsonb constant (fold its cast) in any case. The
    foreign key is checked after the statement (at commit: Django makes it deferred), so the
    submission may reference the plan that the statement itself inserted.
    """
    submission = SchemaSubmission._meta
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(submission.db_table),
        sql.SQL(", ").join(sql.Identifier(f.column) for f in submission.concrete_fields),
        sql.SQL(", ").join([sql.Placeholder()] * len(submission.concrete_fields)),
    )
    if not with_plan:
        return insert.as_string()
    plan = SchemaPlan._meta

    def column(name: str) -> sql.Identifier:
        return sql.Identifier(plan.get_field(name).column)

    return (
        sql.SQL(
            "WITH plan AS (INSERT INTO {table} ({digest}, {created}, {schema}, {script}) "
            "SELECT plan.digest, now(), plan.normalized_schema::jsonb, plan.generated_sql "
            "FROM (SELECT * FROM (VALUES (%s, %s, %s)) AS sent "
            "(digest, normalized_schema, generated_sql) OFFSET 0) AS plan "
            "WHERE NOT EXISTS (SELECT FROM {table} WHERE {digest} = plan.digest) "
            "ON CONFLICT ({digest}) DO NOTHING) {insert}"
        )
        .format(
            table=sql.Identifier(plan.db_table),
            digest=column("digest"),
            created=column("created_at"),
            schema=column("normalized_schema"),
            script=column("generated_sql"),
            insert=insert,
        )
        .as_string()
    )


def _store_outcome(
    submission: SchemaSubmission, outcome: Outcome, events: list[dict[str, Any]]
) -> None:
    """Store the outcome and its events together: one statement, so one commit and one WAL flush.

    A request that wrote to the target was stored as `received` while its script ran, and the
    outcome is what its answer waits for after the target committed: the UPDATE of the row and
    the INSERT of its events go in one round trip (`_outcome_sql`). If that row is not found,
    nothing is written and DatabaseError is raised. Any other request is stored here for the
    first time, without events.
    """
    submission.status = outcome.status
    submission.http_status = outcome.http_status
    submission.response = outcome.response
    submission.validation_errors = outcome.validation_errors
    submission.error_message = outcome.error or ""
    submission.migration_log_id = outcome.migration_log_id
    if submission._state.adding:
        plan = _record_request(submission, outcome)
        if not events:
            _insert_submission(submission, plan)
            return
        with transaction.atomic(using=_write_connection().alias):
            _insert_submission(submission, plan)
            SchemaEvent.objects.bulk_create(_event_rows(submission, events))
        return
    connection = _write_connection()
    rows = _event_rows(submission, events)
    params = [
        *(_db_value(field, submission, connection) for field in _OUTCOME_COLUMNS),
        _db_value(SchemaSubmission._meta.pk, submission, connection),
        *(_db_value(field, row, connection) for row in rows for field in _EVENT_COLUMNS),
    ]
    updated = _execute(connection, _outcome_sql(len(rows)), params)
    if not updated or updated[0] != 1:
        raise DatabaseError(f"submission {submission.pk} was not found to store its outcome")


def _write_connection() -> BaseDatabaseWrapper:
    return connections[router.db_for_write(SchemaSubmission)]


def _execute(connection: BaseDatabaseWrapper, query: str, params: list[Any]) -> Any:
    """Execute one statement; return its first row, if it returns rows."""
    # In a caller's transaction (a test's), a savepoint keeps it usable if this fails.
    with (
        transaction.atomic(using=connection.alias) if connection.in_atomic_block else nullcontext(),
        connection.cursor() as cursor,
    ):
        cursor.execute(query, params)
        return cursor.fetchone() if cursor.description else None


def _event_rows(submission: SchemaSubmission, events: list[dict[str, Any]]) -> list[SchemaEvent]:
    return [
        SchemaEvent(event_type=event["event_type"], submission=submission, payload=event)
        for event in events
    ]


_OUTCOME_COLUMNS = [SchemaSubmission._meta.get_field(name) for name in _OUTCOME_FIELDS]
_EVENT_COLUMNS = SchemaEvent._meta.concrete_fields


def _db_value(field: Field[Any, Any], instance: Model, connection: BaseDatabaseWrapper) -> Any:
    """The value `field` of `instance` is saved as (Model.save's `pre_save`: auto_now...)."""
    return field.get_db_prep_save(field.pre_save(instance, instance._state.adding), connection)


@functools.cache
def _outcome_sql(event_count: int) -> str:
    """The statement of `_store_outcome`, written out once from the models' metadata.

    Parameters: the outcome's columns (`_OUTCOME_COLUMNS`), the submission's id, then each
    event's columns (`_EVENT_COLUMNS`). It returns how many submissions it updated. The ORM's
    `save` + `bulk_create` in `transaction.atomic` take BEGIN, two statements and COMMIT (four
    round trips, about 4 ms of an apply's answer, 1 ms of it building the UPDATE).
    """
    submission, event = SchemaSubmission._meta, SchemaEvent._meta

    def placeholders(count: int) -> sql.Composed:
        return sql.SQL("({})").format(sql.SQL(", ").join([sql.Placeholder()] * count))

    query = sql.SQL(
        "WITH outcome AS (UPDATE {table} SET {assignments} WHERE {pk} = %s RETURNING 1){events} "
        "SELECT count(*) FROM outcome"
    ).format(
        table=sql.Identifier(submission.db_table),
        assignments=sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(field.column)) for field in _OUTCOME_COLUMNS
        ),
        pk=sql.Identifier(submission.pk.column),
        # The events only with their outcome: none if the UPDATE found no row.
        events=sql.SQL(
            ", events AS (INSERT INTO {} ({}) SELECT * FROM (VALUES {}) AS event "
            "WHERE EXISTS (SELECT 1 FROM outcome))"
        ).format(
            sql.Identifier(event.db_table),
            sql.SQL(", ").join(sql.Identifier(field.column) for field in _EVENT_COLUMNS),
            sql.SQL(", ").join([placeholders(len(_EVENT_COLUMNS))] * event_count),
        )
        if event_count
        else sql.SQL(""),
    )
    return query.as_string()


def _store_unavailable(submission: SchemaSubmission, exc: psycopg.OperationalError) -> None:
    submission.status = SchemaSubmission.Status.FAILED
    submission.http_status = 503
    submission.error_message = f"target database unavailable: {exc}"
    if submission._state.adding:  # the target failed before the request was planned
        _insert_submission(submission, None)
    else:
        submission.save(update_fields=_OUTCOME_FIELDS)
