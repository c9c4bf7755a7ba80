"""Risk levels, the rules that set them, and the gate that decides what a profile lets through.

Every operation of a plan is `safe`, `review` or `destructive`, with the rule that classified
it (named in the spirit of Squawk's rules) and a reason a person can act on. Some operations
cannot be applied automatically at all (a `blocker`): those stop the plan under every profile.

`context.validation_profile` decides:

| profile      | safe plan | review plan | destructive plan                              |
|--------------|-----------|-------------|-----------------------------------------------|
| `safe`       | applied   | held        | blocked, or held if `allow_destructive`       |
| `review`     | held      | held        | held                                          |
| `permissive` | applied   | applied     | held                                          |

A destructive plan is never applied without an approver. An approved plan is applied whatever
its level (a blocker still stops it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from builder.request.envelope import PERMISSIVE_PROFILE, REVIEW_PROFILE, SAFE_PROFILE


class Risk(StrEnum):
    SAFE = "safe"
    REVIEW = "review"
    DESTRUCTIVE = "destructive"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Risk.SAFE: 0, Risk.REVIEW: 1, Risk.DESTRUCTIVE: 2}


class Rule(StrEnum):
    """The rules that classify an operation (Squawk's names where Squawk has the rule)."""

    ADDING_REQUIRED_FIELD = "adding-required-field"
    ADDING_NOT_NULLABLE_FIELD = "adding-not-nullable-field"
    ADDING_FIELD_WITH_DEFAULT = "adding-field-with-default"
    CHANGING_COLUMN_TYPE = "changing-column-type"
    DISALLOWED_UNIQUE_CONSTRAINT = "disallowed-unique-constraint"
    CONSTRAINT_MISSING_NOT_VALID = "constraint-missing-not-valid"
    REQUIRE_CONCURRENT_INDEX_CREATION = "require-concurrent-index-creation"
    BAN_DROP_COLUMN = "ban-drop-column"
    BAN_DROP_TABLE = "ban-drop-table"
    BAN_DROP_INDEX = "ban-drop-index"
    CHANGING_PRIMARY_KEY = "changing-primary-key"
    CHANGED_DEFINITION = "changed-definition"
    UNKNOWN_REFERENCE = "unknown-reference"
    CROSS_TENANT_REFERENCE = "cross-tenant-reference"


class Decision(StrEnum):
    APPLY = "apply"
    HOLD = "hold"
    BLOCK = "block"


@dataclass(frozen=True)
class Verdict:
    """What the gate decided, and why (one sentence for the answer's summary)."""

    decision: Decision
    reason: str
    code: str | None = None


def gate(
    level: Risk,
    *,
    blockers: int,
    profile: str,
    allow_destructive: bool,
    hold: bool = False,
    approved: bool = False,
) -> Verdict:
    """Decide what becomes of a plan of risk `level` under `profile`.

    `hold` holds whatever the profile says (an operator's draft, or a service that requires
    approval for everything); `approved` is a plan an approver has accepted.
    """
    if blockers:
        return Verdict(
            Decision.BLOCK,
            f"{blockers} operation(s) cannot be applied automatically; nothing was executed.",
            "plan_not_applicable",
        )
    if level == Risk.DESTRUCTIVE and profile == SAFE_PROFILE and not allow_destructive:
        return Verdict(
            Decision.BLOCK,
            "The plan drops data or objects and the payload does not set allow_destructive "
            "(required under the safe profile); nothing was executed.",
            "destructive_not_allowed",
        )
    if approved:
        return Verdict(Decision.APPLY, "Approved.")
    if level == Risk.DESTRUCTIVE:
        return Verdict(Decision.HOLD, "the plan is destructive")
    if hold:
        return Verdict(Decision.HOLD, "approval is required")
    if profile == REVIEW_PROFILE:
        return Verdict(Decision.HOLD, "the review profile holds every plan")
    if level == Risk.REVIEW and profile != PERMISSIVE_PROFILE:
        return Verdict(Decision.HOLD, "the plan needs review")
    return Verdict(Decision.APPLY, f"A {level} plan under the {profile} profile is applied.")
