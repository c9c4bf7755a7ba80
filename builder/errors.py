"""Structured errors that the builder reports to callers."""

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


class SchemaValidationError(Exception):
    """Raised with every issue found when input cannot be normalized."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        super().__init__(f"{len(issues)} validation error(s)")
        self.issues = issues


class UnsafeSQLError(Exception):
    """Raised when generated SQL does not pass the PostgreSQL parser check (a builder bug)."""
