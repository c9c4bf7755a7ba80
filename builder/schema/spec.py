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
    """A table with its columns in definition order and its indexes."""

    name: str
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...] = ()
    tenant_scoped: bool = True

    def column(self, name: str) -> Column | None:
        """Return the column called `name`, or None."""
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class Schema:
    """A normalized schema version: the unit that is hashed, rendered and applied."""

    version: str
    description: str
    tables: tuple[Table, ...] = field(default_factory=tuple)

    def table(self, name: str) -> Table | None:
        """Return the table called `name`, or None."""
        return next((t for t in self.tables if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the canonical form that is hashed and stored)."""
        return {
            "version": self.version,
            "description": self.description,
            "tables": [_table_dict(t) for t in self.tables],
        }

    @cached_property
    def canonical_json(self) -> str:
        """The canonical JSON text of `to_dict()` (sorted keys, no spaces).

        Made once per schema: it is hashed when the schema is planned, and stored with every
        request that names it (a schema's plan is reused from the plan cache).
        """
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _table_dict(table: Table) -> dict[str, Any]:
    return {
        "name": table.name,
        "tenant_scoped": table.tenant_scoped,
        "columns": [_column_dict(c) for c in table.columns],
        "indexes": [
            {"name": i.name, "columns": list(i.columns), "unique": i.unique} for i in table.indexes
        ],
    }


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
