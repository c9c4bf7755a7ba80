"""Frozen dataclasses describing a normalized schema.

A `Schema` is what `normalize_schema` produces from caller input once every name, type and default
has been validated. Everything in it is safe to render into SQL: names are snake_case identifiers
(still always quoted when rendered), types and defaults are canonical SQL text built by the builder
from allow lists, never caller text pasted through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

ON_DELETE_ACTIONS = ("NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT")


@dataclass(frozen=True)
class ForeignKey:
    """A reference from one column to a column of another (or the same) table."""

    table: str
    column: str = "id"
    on_delete: str = "NO ACTION"


@dataclass(frozen=True)
class Column:
    """One column. `type` and `default` are canonical SQL produced by the builder."""

    name: str
    type: str
    not_null: bool = False
    default: str | None = None
    unique: bool = False
    primary_key: bool = False
    references: ForeignKey | None = None


@dataclass(frozen=True)
class Index:
    """An index on one table; `name` is final (given by the caller or generated)."""

    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class Table:
    """A table with its columns in definition order and its indexes.

    `drop_columns` and `drop_indexes` name columns and indexes that the caller wants removed from
    the table as it exists in the target database, in the caller's order; none of them is one
    that the table defines.
    """

    name: str
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...] = ()
    tenant_scoped: bool = True
    drop_columns: tuple[str, ...] = ()
    drop_indexes: tuple[str, ...] = ()

    def column(self, name: str) -> Column | None:
        """Return the column called `name`, or None."""
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class Schema:
    """A normalized schema version: the unit that is hashed, rendered and applied.

    `drop_tables` names tables (none of `tables`) that the caller wants removed from the target
    database, in the caller's order; `allow_destructive` is the caller's consent to changes that
    lose data.
    """

    version: str
    description: str
    tables: tuple[Table, ...] = field(default_factory=tuple)
    drop_tables: tuple[str, ...] = ()
    allow_destructive: bool = False

    def table(self, name: str) -> Table | None:
        """Return the table called `name`, or None."""
        return next((t for t in self.tables if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the canonical form that is hashed and stored).

        `drop_tables` and `allow_destructive` are there only when they say something (a list that
        is not empty, true): a schema without them keeps the form, and the hash, that it had
        before they existed.
        """
        result: dict[str, Any] = {
            "version": self.version,
            "description": self.description,
            "tables": [_table_dict(t) for t in self.tables],
        }
        if self.drop_tables:
            result["drop_tables"] = list(self.drop_tables)
        if self.allow_destructive:
            result["allow_destructive"] = True
        return result

    @cached_property
    def canonical_json(self) -> str:
        """The canonical JSON text of `to_dict()` (sorted keys, no spaces).

        Made once per schema: it is hashed when the schema is planned, and stored with every
        request that names it (a schema's plan is reused from the plan cache).
        """
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _table_dict(table: Table) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": table.name,
        "tenant_scoped": table.tenant_scoped,
        "columns": [_column_dict(c) for c in table.columns],
        "indexes": [
            {"name": i.name, "columns": list(i.columns), "unique": i.unique} for i in table.indexes
        ],
    }
    # Only when not empty, as `drop_tables` in `Schema.to_dict`.
    if table.drop_columns:
        result["drop_columns"] = list(table.drop_columns)
    if table.drop_indexes:
        result["drop_indexes"] = list(table.drop_indexes)
    return result


def _column_dict(column: Column) -> dict[str, Any]:
    references = None
    if column.references is not None:
        ref = column.references
        references = {"table": ref.table, "column": ref.column, "on_delete": ref.on_delete}
    return {
        "name": column.name,
        "type": column.type,
        "not_null": column.not_null,
        "default": column.default,
        "unique": column.unique,
        "primary_key": column.primary_key,
        "references": references,
    }
