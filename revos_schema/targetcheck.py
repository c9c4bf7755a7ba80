"""The plan of a request against the target database now, and what else it would meet there.

A draft's preview and a held submission's preview show the plan that applying would run now:
`builder.pipeline.plan_against` reads the target's catalog (without a lock) and plans the
request against it. Beside the plan: what in the target's existing tables lets one tenant
reach another's rows (and that the plan does not change), and whether the version is applied
already (the apply would be a noop or a conflict). A target that cannot be read is never an
error: the preview falls back to the plan it can make without it, and says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from builder.db import catalog, ledger
from builder.errors import BuilderError
from builder.evolve.plan import Plan
from builder.evolve.risk import Decision, Verdict, gate
from builder.pipeline import Prepared, offline_plan, plan_against, preview_verdict
from builder.sql import squawk
from revos_schema import services
from revos_schema.models import SchemaSubmission
from revos_schema.preview import PlanView, Preview, build_preview, plan_view

# The operations whose subject is an index or a key: an isolation gap in it is what they change.
_KEY_ACTIONS = frozenset({"add_index", "add_unique", "replace_unique", "add_foreign_key"})


@dataclass(frozen=True)
class TargetCheck:
    """The plan against the target now (None if the target could not be read), the warnings
    about what it meets there, and why the target could not be read."""

    plan: Plan | None
    warnings: list[str]
    problem: str = ""

    @property
    def unreadable(self) -> str:
        """The sentence saying that the target could not be read, and why."""
        return f"The target database could not be read ({self.problem})."


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (psycopg's go on with the query's text)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check(prepared: Prepared) -> TargetCheck:
    """Plan `prepared` against the target, and read what else it would meet there."""
    target_schema = services.builder_settings().target_schema
    try:
        with services.target_connection() as conn:
            plan = plan_against(conn, prepared.schema, target_schema)
            warnings = _warnings(conn, prepared, plan, target_schema)
    except (psycopg.Error, BuilderError) as exc:
        return TargetCheck(plan=None, warnings=[], problem=first_line(exc))
    return TargetCheck(plan=plan, warnings=warnings)


def _warnings(
    conn: psycopg.Connection[Any], prepared: Prepared, plan: Plan, target_schema: str
) -> list[str]:
    schema = prepared.schema
    existing = set(plan.existing_tables)
    tenant_tables = [t.name for t in schema.tables if t.tenant_scoped and t.name in existing]
    changed = {repr(op.subject) for op in plan.operations if op.action in _KEY_ACTIONS}
    found = [
        gap
        for gap in catalog.tenant_isolation_gaps(conn, target_schema, tenant_tables)
        if not any(subject in gap for subject in changed)
    ]
    has_ledger = ledger.LEDGER_TABLE in catalog.existing_relations(
        conn, target_schema, [ledger.LEDGER_TABLE]
    )
    applied = ledger.find_applied(conn, target_schema, schema.version) if has_ledger else None
    if applied is not None:
        when = f"{applied.applied_at:%Y-%m-%d %H:%M} UTC"
        if applied.schema_hash == prepared.schema_hash:
            found.append(
                f"Version {schema.version} was applied with this exact definition on {when}: "
                "applying it again changes nothing (noop)."
            )
        else:
            found.append(
                f"Version {schema.version} was applied with a different definition on {when}: "
                "applying this one will be refused as a conflict. Use a new version."
            )
    return found


def warnings_for(prepared: Prepared) -> list[str]:
    """The warnings of `check` alone, or the one saying that the target could not be read."""
    checked = check(prepared)
    if checked.plan is None:
        return [f"The target database could not be read, so it was not checked: {checked.problem}"]
    return checked.warnings


# --- the previews -----------------------------------------------------------------------------

ON_TARGET = "the target database as it is now"
ON_EMPTY = "an empty database (the SQL of a first apply)"
ON_HELD = "the target database when the request was held"


def _view(
    plan: Plan, verdict: Verdict, source: str, *, against_target: bool, when: str, text: str = ""
) -> PlanView:
    return plan_view(
        [op.to_dict() for op in plan.operations],
        risk=str(plan.risk),
        notes=plan.notes,
        decision=str(verdict.decision),
        decision_text=f"{when}: {text or verdict.reason}",
        source=source,
        against_target=against_target,
        squawk=squawk.lint(plan.transaction_statements, plan.after_commit_statements),
    )


def draft_preview(prepared: Prepared) -> Preview:
    """A draft's preview: its plan against the target now, as submitting it would be planned
    (held for an approver); against an empty database if the target cannot be read."""
    checked = check(prepared)
    fallback = ""
    if checked.plan is not None:
        plan, source = checked.plan, ON_TARGET
    else:
        plan = offline_plan(prepared, services.builder_settings().target_schema)
        source = ON_EMPTY
        fallback = (
            f"{checked.unreadable} The plan below is made against an empty database: it shows "
            "the SQL of a first apply, not what applying would change in the target."
        )
    verdict = preview_verdict(prepared, plan, hold=True)
    return build_preview(
        prepared.schema.to_dict(),
        prepared.envelope.payload,
        plan.migration.script,
        checked.warnings,
        target_checked=checked.plan is not None,
        plan=_view(
            plan,
            verdict,
            source,
            against_target=checked.plan is not None,
            when=f"Once submitted (profile {prepared.envelope.validation_profile})",
        ),
        fallback=fallback,
    )


def submission_preview(submission: SchemaSubmission) -> Preview | None:
    """A submission's preview (None without a stored plan).

    While it is held, the plan is made again against the target now, as approving would make
    it: if it differs from the plan that was held, approving would be refused. If the target
    cannot be read (or the request no longer prepares as it did), the stored plan is shown,
    with a message saying why. Once decided, the stored answer describes the plan.
    """
    stored = submission.plan
    if stored is None:
        return None
    envelope = submission.envelope if isinstance(submission.envelope, Mapping) else {}
    outputs = (submission.response or {}).get("result", {}).get("primary_outputs") or {}
    warnings = list(outputs.get("warnings") or [])
    pending = submission.status == SchemaSubmission.Status.PENDING_APPROVAL
    fallback = ""
    if pending:
        prepared = services.prepare_request(envelope)
        if isinstance(prepared, Prepared) and prepared.schema_hash == submission.schema_hash:
            checked = check(prepared)
            if checked.plan is not None:
                return _held_preview(submission, prepared, checked, warnings)
            fallback = (
                f"{checked.unreadable} The plan below is the one made when the request was held."
            )
        else:
            fallback = (
                "The stored request no longer prepares to the schema that was held, so it was "
                "not planned against the target again; approving it will be refused."
            )
    return build_preview(
        stored.normalized_schema,
        envelope.get("payload"),
        stored.generated_sql,
        warnings,
        plan=_stored_view(outputs, ON_HELD if pending else "the target database at the time"),
        fallback=fallback,
    )


def _held_preview(
    submission: SchemaSubmission,
    prepared: Prepared,
    checked: TargetCheck,
    warnings: list[str],
) -> Preview:
    plan = checked.plan
    assert plan is not None
    held_checksum = hashlib.sha256(submission.generated_sql.encode()).hexdigest()
    if plan.migration.checksum != held_checksum:
        warnings = [
            "The target database changed since this request was held: the plan below, made "
            "against it now, differs from the plan that was held, so approving will be refused "
            "as a conflict and nothing will run. Submit the request again to hold the new plan.",
            *warnings,
        ]
    # What approving would do: an approved plan is applied whatever its level, unless it has a
    # blocker or drops what the payload does not allow.
    verdict = gate(
        plan.risk,
        blockers=len(plan.blockers),
        profile=prepared.envelope.validation_profile,
        allow_destructive=prepared.schema.allow_destructive,
        approved=True,
    )
    envelope = submission.envelope if isinstance(submission.envelope, Mapping) else {}
    return build_preview(
        prepared.schema.to_dict(),
        envelope.get("payload"),
        plan.migration.script,
        [*warnings, *checked.warnings],
        target_checked=True,
        plan=_view(
            plan,
            verdict,
            ON_TARGET,
            against_target=True,
            when="Once approved",
            text="this plan is applied." if verdict.decision == Decision.APPLY else "",
        ),
    )


def _stored_view(outputs: Mapping[str, Any], source: str) -> PlanView | None:
    """The plan of a stored answer (None if it was stored without its operations)."""
    operations = outputs.get("plan")
    report = outputs.get("risk")
    if not isinstance(operations, list) or not isinstance(report, Mapping):
        return None
    if not all(isinstance(op, Mapping) and "risk" in op for op in operations):
        return None
    return plan_view(
        operations,
        risk=str(report.get("level") or "safe"),
        notes=[str(n) for n in report.get("notes") or []],
        decision=str(outputs.get("decision") or ""),
        source=source,
    )
