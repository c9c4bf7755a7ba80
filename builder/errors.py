"""The builder's errors: one root class, `BuilderError`, so callers can catch the family."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ValidationIssue:
    """One problem with the caller's input.

    `path` points into the request envelope (`payload.tables[2].columns[0].type`), `code` is a
    stable machine-readable word (`required`, `invalid_type`, `not_allowed`, ...), and `message` is
    a sentence for a person.
    """

    path: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """Return the `{path, code, message}` form used in `result.validation_errors`."""
        return {"path": self.path, "code": self.code, "message": self.message}


class BuilderError(Exception):
    """The root of every error the builder raises."""


class InvalidRequestJSON(BuilderError, ValueError):
    """A request body cannot be used as a request; the message says why."""


class SchemaValidationError(BuilderError):
    """Raised with every issue found when input cannot be normalized."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        super().__init__(f"{len(issues)} validation error(s)")
        self.issues = issues


class UnsafeSQLError(BuilderError):
    """Raised when generated SQL does not pass the PostgreSQL parser check (a builder bug)."""


class CallerFailed(BuilderError):
    """The caller's `before_commit` raised: the apply was rolled back and recorded as `failed`.

    The caller's exception is the `__cause__`.
    """
