"""Limits on the size of one schema version, below the fixed maxima of the contract.

The contract's maxima (`normalize.MAX_TABLES`, and `MAX_COLUMNS` and `MAX_INDEXES` per table)
keep a payload readable. A payload well within them and within the body limit can still ask a
lot of the target: thousands of indexes, each created in the apply's one transaction and locked
until its COMMIT, and a script of megabytes that the ledger stores with every attempt. These
limits bound that work; each is configurable (the service reads them from its environment, see
`SETTINGS`).

They are checked once the rest of the payload is valid: `limit_issues` on the normalized
`Schema`, whose tables are then exactly the payload's, in its order, so every path points at
what the caller sent; `statement_issues` on its rendered migration. Each limit that is exceeded
is one `ValidationIssue` whose code names the limit and whose message names the setting that
raises it.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.errors import ValidationIssue
from builder.schema.spec import Schema


@dataclass(frozen=True)
class Limits:
    """The most one schema version may describe; counts include the automatic columns and indexes.

    The defaults let the largest payload the contract allows in tables (1,000) through with an
    average of 32 columns, 8 indexes and 16 statements per table, and a table as wide as
    PostgreSQL allows (1,600 columns), but with at most 32 indexes, since every index is written
    on each insert and update, and locked by the apply until its COMMIT.
    """

    tables: int = 1_000
    columns_per_table: int = 1_600
    columns: int = 32_000
    indexes_per_table: int = 32
    indexes: int = 8_000
    statements: int = 16_000


DEFAULT_LIMITS = Limits()

SETTINGS = {
    "tables": "WF106_MAX_TABLES",
    "columns_per_table": "WF106_MAX_COLUMNS_PER_TABLE",
    "columns": "WF106_MAX_COLUMNS",
    "indexes_per_table": "WF106_MAX_INDEXES_PER_TABLE",
    "indexes": "WF106_MAX_INDEXES",
    "statements": "WF106_MAX_STATEMENTS",
}
"""The environment variable the service reads each limit from, named in the messages."""


def limit_issues(schema: Schema, limits: Limits = DEFAULT_LIMITS) -> list[ValidationIssue]:
    """Return one issue per limit that `schema` exceeds: per table first, then the totals."""
    issues: list[ValidationIssue] = []
    for index, table in enumerate(schema.tables):
        path, name = f"payload.tables[{index}]", table.name
        issues += _over(
            limits,
            "columns_per_table",
            f"{path}.columns",
            len(table.columns),
            f"Table {name!r} has {{}} columns, the automatic ones included",
        )
        issues += _over(
            limits,
            "indexes_per_table",
            f"{path}.indexes",
            len(table.indexes),
            f"Table {name!r} has {{}} indexes, the automatic ones included",
        )
    tables = schema.tables
    issues += _over(limits, "tables", "payload.tables", len(tables), "The payload has {} tables")
    for limit in ("columns", "indexes"):
        count = sum(len(getattr(t, limit)) for t in tables)
        what = f"The payload has {{}} {limit} in all, the automatic ones included"
        issues += _over(limits, limit, "payload.tables", count, what)
    return issues


def statement_issues(statements: int, limits: Limits = DEFAULT_LIMITS) -> list[ValidationIssue]:
    """Return an issue if a migration of `statements` statements is over the limit."""
    what = "The migration of this payload has {} statements"
    return _over(limits, "statements", "payload.tables", statements, what)


def _over(limits: Limits, limit: str, path: str, count: int, what: str) -> list[ValidationIssue]:
    """Return an issue if `count` is over `limit`; `what` says what was counted (`{}`: count).

    The code names what is counted: `too_many_columns` per table and in all alike.
    """
    allowed: int = getattr(limits, limit)
    if count <= allowed:
        return []
    kind = limit.removesuffix("_per_table")
    # A version can be split into smaller ones; a table cannot.
    split = "Split the version into smaller ones, or raise" if kind == limit else "Raise"
    message = (
        f"{what.format(f'{count:,}')}; at most {allowed:,} are allowed. {split} the limit with "
        f"the setting {SETTINGS[limit]}."
    )
    return [ValidationIssue(path, f"too_many_{kind}", message)]
