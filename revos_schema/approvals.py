"""Deciding on requests held for approval: approve (apply the plan that was shown) or reject.

The webhook's approve and reject endpoints and the admin's buttons call `approve` and `reject`;
the rules live here once:

- the decider holds `revos_schema.approve_schema` (403 otherwise);
- four eyes: the decider is not the submitter, superusers included, unless the setting
  `WF106_ALLOW_SELF_APPROVAL` is on (403 otherwise);
- only a `pending_approval` submission can be decided, once (409 otherwise);
- what is approved is what was shown: the stored request must normalize to the same schema hash
  (409 otherwise), and its plan against the target must still be the SQL shown (409 otherwise,
  the submission stays held); the apply plans it again under the target's lock, and if a change
  landed in between, nothing runs and the answer is `conflict` (409);
- a rejection has a reason (400 otherwise).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import psycopg
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from builder.pipeline import Outcome, Prepared, apply_prepared, plan_against
from builder.request.body import sha256_prefixed
from builder.request.envelope import output_envelope, parse_envelope
from builder.status import Status
from revos_schema import events, services
from revos_schema.models import Decision, SchemaEvent, SchemaSubmission

APPROVE_PERMISSION = "revos_schema.approve_schema"


class DecisionRefused(Exception):
    """The decision is not allowed; `http_status` says which kind of refusal it is."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


def refusal(user: Any, submission: SchemaSubmission) -> DecisionRefused | None:
    """Return why `user` may not decide on `submission`, or None if they may."""
    if not user.has_perm(APPROVE_PERMISSION):
        return DecisionRefused(403, f"This account lacks the permission {APPROVE_PERMISSION}.")
    if is_submitter(user, submission) and not settings.WF106_ALLOW_SELF_APPROVAL:
        return DecisionRefused(
            403, "A submission is decided by someone other than its submitter (four eyes)."
        )
    if submission.status != SchemaSubmission.Status.PENDING_APPROVAL:
        return DecisionRefused(
            409, f"This submission is {submission.status}: it is not waiting for a decision."
        )
    return None


def is_submitter(user: Any, submission: SchemaSubmission) -> bool:
    """Did `user` send `submission` (as its account, or by its name for the command line)?"""
    if submission.submitted_by_id is not None:
        return bool(submission.submitted_by_id == user.pk)
    return bool(submission.actor) and submission.actor == user.get_username()


def decision_of(submission: SchemaSubmission) -> dict[str, Any] | None:
    """The `result.decision` of a decided submission: `{by, at, reason, action}`."""
    if not submission.decision:
        return None
    return {
        "by": submission.decided_by.get_username() if submission.decided_by else None,
        "at": submission.decided_at.isoformat().replace("+00:00", "Z")
        if submission.decided_at
        else None,
        "reason": submission.decision_reason,
        "action": submission.decision,
    }


def approve(submission_id: Any, *, user: Any, reason: str = "") -> tuple[Outcome, SchemaSubmission]:
    """Approve a held submission and apply its stored plan; return the apply's outcome.

    The decision is on record (the submission `received`, with who approved it) before anything
    reaches the target, so a second approval finds it decided. Raise `DecisionRefused`, or
    `SchemaSubmission.DoesNotExist`; an unreachable target is stored as `failed` (503) and
    raised as `psycopg.OperationalError`, like a webhook request's.
    """
    with transaction.atomic():
        submission = SchemaSubmission.objects.select_for_update().get(pk=submission_id)
        refused = refusal(user, submission)
        if refused is not None:
            raise refused
        prepared = _same_plan(submission)
        _still_the_shown_plan(prepared, submission)
        _decide(submission, Decision.APPROVED, user, reason)
        submission.status = SchemaSubmission.Status.RECEIVED
        submission.save(update_fields=[*_DECISION_FIELDS, "status"])
        approved = _record_event(submission, "schema_migration_approved")
    events: list[dict[str, Any]] = []
    try:
        with services.target_connection() as conn:
            outcome = apply_prepared(
                prepared,
                conn,
                settings=services.builder_settings(),
                emit=events.append,
                approved_checksum=hashlib.sha256(submission.generated_sql.encode()).hexdigest(),
                account=services.submitter_account(submission),
                approved_by=user.get_username(),
            )
    except psycopg.OperationalError as exc:
        services.store_unavailable(submission, exc)
        raise
    outcome = _with_decision(outcome, submission)
    try:
        recorded = services.store_outcome(submission, outcome, events)
    except Exception as exc:
        raise services.OutcomeNotStored(outcome) from exc
    return services.with_deliveries(outcome, submission, [approved, *recorded]), submission


def reject(submission_id: Any, *, user: Any, reason: str) -> SchemaSubmission:
    """Reject a held submission with a reason; nothing reaches the target."""
    if not reason.strip():
        raise DecisionRefused(400, "A rejection needs a reason.")
    with transaction.atomic():
        submission = SchemaSubmission.objects.select_for_update().get(pk=submission_id)
        refused = refusal(user, submission)
        if refused is not None:
            raise refused
        _decide(submission, Decision.REJECTED, user, reason)
        submission.status = SchemaSubmission.Status.REJECTED
        submission.http_status = Status.REJECTED.http_status
        response = output_envelope(
            parse_envelope(submission.envelope),
            status=Status.REJECTED,
            summary=(
                f"Schema v{submission.schema_version} was rejected by {user.get_username()}; "
                "nothing was executed."
            ),
            latency_ms=0,
            primary_outputs={"schema_version": submission.schema_version, "warnings": []},
            result_extra={"decision": decision_of(submission)},
        )
        submission.response = response
        submission.save(update_fields=[*_DECISION_FIELDS, *services.OUTCOME_FIELDS])
        rejected = _record_event(submission, "schema_migration_rejected")
    services.deliveries_noted(submission, submission.response, [rejected])
    return submission


_DECISION_FIELDS = ("decision", "decided_by", "decided_at", "decision_reason", "updated_at")


def _same_plan(submission: SchemaSubmission) -> Prepared:
    """Prepare the stored request again; refuse (409) unless its schema is the stored one."""
    prepared = services.prepare_request(submission.envelope)
    if not isinstance(prepared, Prepared):
        raise DecisionRefused(409, "The stored request no longer passes validation.")
    if prepared.schema_hash != submission.schema_hash:
        raise DecisionRefused(
            409,
            "The schema of this request has changed since it was shown (its hash differs); "
            "nothing was run. Submit it again to review the new plan.",
        )
    return prepared


def _still_the_shown_plan(prepared: Prepared, submission: SchemaSubmission) -> None:
    """Plan the request against the target again; refuse (409) unless its SQL is the one shown.

    The submission stays held: an approver reviews the new plan after it is submitted again.
    The apply checks once more under the target's lock, for a change that lands in between.
    """
    target_schema = services.builder_settings().target_schema
    with services.target_connection() as conn:
        plan = plan_against(conn, prepared.schema, target_schema)
    if plan.migration.script != submission.generated_sql:
        raise DecisionRefused(
            409,
            "The plan against the target differs from the approved plan (the database or the "
            "builder changed since it was shown); nothing was run. Submit the request again to "
            "review the new plan.",
        )


def _decide(submission: SchemaSubmission, action: str, user: Any, reason: str) -> None:
    submission.decision = action
    submission.decided_by = user
    submission.decided_at = timezone.now()
    submission.decision_reason = reason


def _record_event(submission: SchemaSubmission, event_type: str) -> SchemaEvent:
    return events.record(submission, event_type, decision=decision_of(submission))


def _with_decision(outcome: Outcome, submission: SchemaSubmission) -> Outcome:
    """The outcome with `result.decision` in its answer (and the answer's hash to match)."""
    result = {**outcome.response["result"], "decision": decision_of(submission)}
    meta_out = {**outcome.response["meta_out"], "outputs_hash": sha256_prefixed(result)}
    return replace(outcome, response={**outcome.response, "meta_out": meta_out, "result": result})
