"""The events of migration outcomes, recorded with the outcome they tell of (the outbox).

Every event is written in the transaction that stores its outcome, so an event is on record
exactly when its outcome is:

- `schema_migration_applied` and `schema_migration_failed`: an apply committed, or failed with
  its ledger row (the builder emits them; `revos_schema.reconcile` when it settles one);
- `schema_migration_pending_approval`: a request held for an approver (the builder emits it);
- `schema_migration_approved` and `schema_migration_rejected`: an approver's decision.

Every payload carries the same keys (see `PAYLOAD_KEYS`); `revos_schema.delivery` sends it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from builder.pipeline import iso_utc
from builder.request.envelope import WORKFLOW_NAME, parse_envelope
from revos_schema.models import SchemaEvent, SchemaSubmission

# The keys of every event's payload; some events add their own (`error`, `reapplied`, `decision`).
PAYLOAD_KEYS = (
    "event_type",
    "workflow_name",
    "workflow_run_id",
    "tenant_id",
    "submission_id",
    "schema_version",
    "schema_hash",
    "table_count",
    "migration_log_id",
    "occurred_at",
)


def record_emitted(
    submission: SchemaSubmission, emitted: list[dict[str, Any]]
) -> list[SchemaEvent]:
    """Record the events the builder emitted for `submission`'s outcome (in its transaction)."""
    return SchemaEvent.objects.bulk_create(
        [
            SchemaEvent(
                event_type=event["event_type"],
                submission=submission,
                payload={**event, "submission_id": str(submission.pk)},
            )
            for event in emitted
        ]
    )


def record(
    submission: SchemaSubmission,
    event_type: str,
    *,
    occurred_at: datetime | None = None,
    **extra: Any,
) -> SchemaEvent:
    """Record an event about a stored submission (a decision, or an outcome settled later)."""
    schema = submission.normalized_schema or {}
    envelope = parse_envelope(submission.envelope)
    payload: dict[str, Any] = {
        "event_type": event_type,
        "workflow_name": WORKFLOW_NAME,
        "workflow_run_id": envelope.workflow_run_id,
        "tenant_id": envelope.tenant_id,
        "submission_id": str(submission.pk),
        "schema_version": submission.schema_version,
        "schema_hash": submission.schema_hash,
        "table_count": len(schema.get("tables", [])),
        "migration_log_id": submission.migration_log_id and str(submission.migration_log_id),
        "occurred_at": iso_utc(occurred_at or datetime.now(UTC)),
        **extra,
    }
    return SchemaEvent.objects.create(event_type=event_type, submission=submission, payload=payload)
