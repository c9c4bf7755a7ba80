"""Settling submissions left `received` against the target's ledger.

A submission is stored as `received` just before the target commits its apply, with the id of
the ledger row that commits with it. If the process dies (or loses a database) before the
outcome is stored, the submission stays `received`; the ledger tells what happened:

- the row is there: the apply committed. The submission becomes `applied`, with its
  `schema_migration_applied` event, exactly once (a retry of the same request, or a noop of
  it, does this at once: `settle_committed`);
- the row is not there, and the submission is older than the statement timeout: the
  transaction did not commit and never will. A `failed` row with
  the attempt's SQL is written to the ledger, since every attempt that reached the target is on
  record there, and the submission becomes `failed` with the reason `interrupted`.

`python manage.py reconcile_submissions` runs `reconcile` (once, or every few seconds with
`--loop`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from builder.db import ledger
from builder.request.envelope import output_envelope, parse_envelope
from builder.status import LedgerStatus, Status
from revos_schema import delivery, events, services
from revos_schema.models import SchemaEvent, SchemaSubmission

INTERRUPTED = "interrupted"


@dataclass
class Report:
    """What one reconciliation did, by submission id."""

    applied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


def settle_window() -> timedelta:
    """How long an apply may still commit after its submission was stored as `received`.

    Only its COMMIT is left by then; the statement timeout bounds every statement of the apply,
    so a transaction older than that is over, one way or the other.
    """
    return timedelta(milliseconds=settings.WF106_STATEMENT_TIMEOUT_MS)


def reconcile(*, now: datetime | None = None) -> Report:
    """Settle every `received` submission against the ledger of the target."""
    now = now or timezone.now()
    report = Report()
    pending = SchemaSubmission.objects.filter(status=SchemaSubmission.Status.RECEIVED)
    ids = list(pending.order_by("created_at").values_list("pk", flat=True))
    if not ids:
        return report
    with services.target_connection() as conn:
        for submission_id in ids:
            settled = _settle(conn, submission_id, now - settle_window())
            getattr(report, settled).append(str(submission_id))
    return report


def settle_committed(*, idempotency_key: str) -> list[str]:
    """Settle the `received` submissions of this request whose apply committed."""
    ids = list(
        SchemaSubmission.objects.filter(
            status=SchemaSubmission.Status.RECEIVED,
            idempotency_key=idempotency_key,
            migration_log_id__isnull=False,
        ).values_list("pk", flat=True)
    )
    if not ids:
        return []
    settled = []
    with services.target_connection() as conn:
        for submission_id in ids:
            if _settle(conn, submission_id, None) == "applied":
                settled.append(str(submission_id))
    return settled


def _settle(
    conn: psycopg.Connection[Any], submission_id: Any, failed_before: datetime | None
) -> str:
    """Settle one submission: "applied", "failed", or "waiting" (it may still commit).

    The event of a settled outcome is delivered right after it commits, as a request's is.
    """
    recorded: list[SchemaEvent] = []
    settled = _settle_locked(conn, submission_id, failed_before, recorded)
    delivery.deliver_now(recorded)
    return settled


def _settle_locked(
    conn: psycopg.Connection[Any],
    submission_id: Any,
    failed_before: datetime | None,
    recorded: list[SchemaEvent],
) -> str:
    target_schema = services.builder_settings().target_schema
    with transaction.atomic():
        submission = (
            SchemaSubmission.objects.select_for_update()
            .filter(pk=submission_id, status=SchemaSubmission.Status.RECEIVED)
            .first()
        )
        if submission is None:
            return "waiting"  # settled by someone else meanwhile
        row_id = submission.migration_log_id
        row = None if row_id is None else ledger.find_row(conn, target_schema, str(row_id))
        if row is not None and row.status != LedgerStatus.FAILED:
            recorded.extend(_settle_applied(submission, row))
            return "applied"
        if failed_before is None or submission.created_at > failed_before:
            return "waiting"
        recorded.append(_settle_failed(conn, submission, target_schema))
        return "failed"


def _settle_applied(submission: SchemaSubmission, row: ledger.LedgerRow) -> list[SchemaEvent]:
    version = submission.schema_version
    summary = (
        f"Applied schema v{version} (migration {row.id}); its outcome was settled from the "
        "target's ledger after the request was interrupted."
    )
    submission.status = Status.APPLIED
    submission.http_status = Status.APPLIED.http_status
    submission.migration_log_id = row.id
    submission.error_message = ""
    submission.response = _envelope(
        submission,
        Status.APPLIED,
        summary,
        {"migration_log_id": row.id},
        data_written=[{"table": ledger.LEDGER_TABLE, "record_id": row.id, "status": row.status}],
    )
    submission.save(update_fields=services.OUTCOME_FIELDS)
    if SchemaEvent.objects.filter(
        submission=submission, event_type="schema_migration_applied"
    ).exists():
        return []
    return [
        events.record(
            submission,
            "schema_migration_applied",
            occurred_at=row.applied_at,
            reapplied=row.status == LedgerStatus.REAPPLIED,
        )
    ]


def _settle_failed(
    conn: psycopg.Connection[Any], submission: SchemaSubmission, target_schema: str
) -> SchemaEvent:
    reason = submission.error_message or "the process stopped before the outcome was stored"
    error = f"{INTERRUPTED}: {reason}"
    row_id = None
    if submission.plan is not None:
        row_id = _record_failed_row(conn, submission, target_schema, error)
    submission.status = Status.FAILED
    submission.http_status = Status.FAILED.http_status
    submission.migration_log_id = row_id
    submission.error_message = error
    submission.response = _envelope(
        submission,
        Status.FAILED,
        f"Applying schema v{submission.schema_version} was interrupted before it committed; "
        "nothing of it was applied.",
        {"migration_log_id": row_id},
        error=error,
        data_written=[]
        if row_id is None
        else [{"table": ledger.LEDGER_TABLE, "record_id": row_id, "status": "failed"}],
    )
    submission.save(update_fields=services.OUTCOME_FIELDS)
    return events.record(submission, "schema_migration_failed", error=error)


def _record_failed_row(
    conn: psycopg.Connection[Any], submission: SchemaSubmission, target_schema: str, error: str
) -> str:
    """Write the interrupted attempt to the ledger, with its SQL; return the row's id."""
    schema = submission.normalized_schema or {}
    script = submission.generated_sql
    envelope = parse_envelope(submission.envelope)
    row = ledger.NewLedgerRow(
        version=submission.schema_version,
        description=str(schema.get("description", "")),
        applied_by=services.submitter_account(submission),
        checksum=hashlib.sha256(script.encode()).hexdigest(),
        status=LedgerStatus.FAILED,
        sql_script=script,
        schema_hash=submission.schema_hash,
        idempotency_key=submission.idempotency_key,
        tenant_id=envelope.tenant_id,
        workflow_run_id=envelope.workflow_run_id,
        metadata={
            "schema": schema,
            "claimed_actor_id": envelope.actor_id,
            "submission_id": str(submission.pk),
            "recorded_by": "reconcile_submissions",
        },
        error_message=error,
    )
    with conn.transaction():
        ledger.ensure_ledger(conn, target_schema)
        row_id, _ = ledger.insert_row(conn, target_schema, row)
    return row_id


def _envelope(
    submission: SchemaSubmission,
    status: Status,
    summary: str,
    outputs: dict[str, Any],
    *,
    error: str | None = None,
    data_written: list[dict[str, Any]],
) -> dict[str, Any]:
    return output_envelope(
        parse_envelope(submission.envelope),
        status=status,
        summary=summary,
        latency_ms=0,
        primary_outputs={"schema_version": submission.schema_version, "warnings": [], **outputs},
        result_extra={} if error is None else {"error": error},
        data_written=data_written,
    )
