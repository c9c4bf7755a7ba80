"""The statuses of an answer, with the HTTP status each one is answered with.

One `StrEnum` for the builder, the Django models, the API and the docs: a status is compared
and stored as its plain string value (`Status.APPLIED == "applied"`).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """What became of one request (the output envelope's `result.status`)."""

    PREVIEW = "preview"
    APPLIED = "applied"
    NOOP = "noop"
    PENDING_APPROVAL = "pending_approval"
    BLOCKED = "blocked"
    CONFLICT = "conflict"
    FAILED = "failed"
    REJECTED = "rejected"

    @property
    def http_status(self) -> int:
        """The HTTP status an answer with this status is sent with."""
        return _HTTP_STATUS[self]

    @property
    def success(self) -> bool:
        """Whether the request did what it asked (`meta_out.success`)."""
        return self in SUCCESS_STATUSES

    @property
    def label(self) -> str:
        """A short label for people (the admin's choices)."""
        return _LABELS.get(self, self.value.replace("_", " ").capitalize())


_HTTP_STATUS = {
    Status.APPLIED: 200,
    Status.NOOP: 200,
    Status.PREVIEW: 200,
    Status.PENDING_APPROVAL: 202,
    Status.REJECTED: 200,
    Status.BLOCKED: 400,
    Status.CONFLICT: 409,
    Status.FAILED: 500,
}
SUCCESS_STATUSES = frozenset({Status.APPLIED, Status.NOOP, Status.PREVIEW, Status.PENDING_APPROVAL})
"""The statuses whose answer says `meta_out.success: true`."""
_LABELS = {Status.NOOP: "Already applied"}


class LedgerStatus(StrEnum):
    """The status of a row of the target's migration ledger (`schema_migrations.status`)."""

    SUCCESS = "success"
    FAILED = "failed"
    REAPPLIED = "reapplied"
