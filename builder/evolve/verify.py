"""Verification and drift: does the database hold what was applied?

A difference is whatever a plan made against the catalog now would still do: a missing column,
an index that is missing or invalid, a key that is not validated, row level security or a
trigger that was disabled, a policy that was dropped. `verify` compares the database with one
schema (after every apply); `verify_database` compares it with everything the ledger says was
applied (`python manage.py schema_verify`, the admin's drift report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from builder.db import introspect
from builder.db.ledger import ledger_table
from builder.evolve.plan import Operation, Plan, catalog_names, make_plan
from builder.schema.names import UPDATED_AT_FUNCTION
from builder.schema.spec import Column, ForeignKey, Index, Schema, Table

_DIFFERENCES = {
    "create_function": "the function {subject}() is missing",
    "create_table": "the table {table!r} is missing",
    "add_column": "the column {table}.{subject} is missing",
    "alter_column_type": "{description} (the column's type differs)",
    "set_default": "the default of {table}.{subject} differs ({description})",
    "set_not_null": "the column {table}.{subject} allows NULL (it should be NOT NULL)",
    "drop_not_null": "the column {table}.{subject} is NOT NULL (it should allow NULL)",
    "primary_key": "the primary key of {table!r} differs",
    "add_unique": "the unique constraint {subject!r} of {table!r} is missing",
    "replace_unique": "the unique constraint {subject!r} of {table!r} differs",
    "add_index": "the index {subject!r} of {table!r} is missing, invalid or different",
    "enable_rls": "row level security is disabled on {table!r}",
    "force_rls": "row level security is not forced on {table!r} (its owner bypasses it)",
    "create_policy": "the tenant isolation policy {subject!r} of {table!r} is missing or differs",
    "create_trigger": "the trigger {subject!r} of {table!r} is missing",
    "enable_trigger": "the trigger {subject!r} of {table!r} is disabled",
    "add_foreign_key": "the foreign key {subject!r} of {table!r} is missing or differs",
    "validate_foreign_key": "the foreign key {subject!r} of {table!r} is not validated",
}


def describe_difference(op: Operation) -> str:
    """One sentence naming what the database lacks, from the operation that would add it."""
    template = _DIFFERENCES.get(op.action, "{description}")
    text = template.format(table=op.table, subject=op.subject, description=op.description)
    return text[:1].upper() + text[1:]


def verification_of(plan: Plan) -> dict[str, Any]:
    """`{ok, differences}` of a plan made against the catalog after an apply."""
    differences = [describe_difference(op) for op in plan.operations]
    return {"ok": not differences, "differences": differences}


def verify(conn: psycopg.Connection[Any], schema: Schema, target_schema: str) -> dict[str, Any]:
    """Read the catalog of `schema`'s tables and compare it with `schema`."""
    live = introspect.read_catalog(
        conn, target_schema, catalog_names(schema), functions=[UPDATED_AT_FUNCTION]
    )
    return verification_of(_without_drops(make_plan(schema, live, occupied=(), check=False)))


def _without_drops(plan: Plan) -> Plan:
    return Plan(
        schema=plan.schema,
        target_schema=plan.target_schema,
        operations=tuple(op for op in plan.operations if not op.action.startswith("drop_")),
    )


@dataclass(frozen=True)
class DriftReport:
    """The database compared with everything the ledger says was applied."""

    ok: bool
    differences: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "differences": self.differences,
            "versions": self.versions,
            "tables": self.tables,
            "unverifiable": self.unverifiable,
        }


# Applied versions in the order they were applied; a version whose transaction committed but
# whose steps after COMMIT failed (its row says failed, with steps) counts too.
_APPLIED = sql.SQL(
    'SELECT "version", "metadata" -> \'schema\' FROM {table} '
    "WHERE \"status\" IN ('success', 'reapplied') "
    "OR (\"status\" = 'failed' AND \"metadata\" ? 'steps') "
    'ORDER BY "applied_at", "id"'
)


def desired_state(conn: psycopg.Connection[Any], target_schema: str) -> tuple[Schema, DriftReport]:
    """Fold the ledger's applied versions into the tables they leave, newest definition last.

    Returns the combined schema and a report of the versions read (those recorded without
    their schema are listed as unverifiable).
    """
    tables: dict[str, Table] = {}
    versions: list[str] = []
    unverifiable: list[str] = []
    try:
        rows = conn.execute(_APPLIED.format(table=ledger_table(target_schema))).fetchall()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        rows = []
    for version, stored in rows:
        if not isinstance(stored, dict):
            unverifiable.append(
                f"Version {version} was recorded without its schema; its tables are not checked."
            )
            continue
        schema = schema_from_dict(stored)
        versions.append(version)
        for name in schema.drop_tables:
            tables.pop(name, None)
        for table in schema.tables:
            tables.pop(table.name, None)  # keep the order in which tables were last defined
            tables[table.name] = table
    combined = Schema(version="ledger", description="applied", tables=tuple(tables.values()))
    return combined, DriftReport(
        ok=True, versions=versions, tables=list(tables), unverifiable=unverifiable
    )


def verify_database(conn: psycopg.Connection[Any], target_schema: str) -> DriftReport:
    """Compare the database with everything the ledger says was applied."""
    combined, read = desired_state(conn, target_schema)
    if not combined.tables:
        return read
    result = verify(conn, combined, target_schema)
    return DriftReport(
        ok=result["ok"],
        differences=result["differences"],
        versions=read.versions,
        tables=read.tables,
        unverifiable=read.unverifiable,
    )


def schema_from_dict(data: dict[str, Any]) -> Schema:
    """Rebuild a `Schema` from its `to_dict()` form (as the ledger keeps it)."""
    return Schema(
        version=data["version"],
        description=data.get("description", ""),
        tables=tuple(_table(t) for t in data.get("tables", [])),
        drop_tables=tuple(data.get("drop_tables", ())),
        allow_destructive=bool(data.get("allow_destructive", False)),
    )


def _table(data: dict[str, Any]) -> Table:
    return Table(
        name=data["name"],
        tenant_scoped=data.get("tenant_scoped", True),
        columns=tuple(_column(c) for c in data.get("columns", [])),
        indexes=tuple(
            Index(name=i["name"], columns=tuple(i["columns"]), unique=i.get("unique", False))
            for i in data.get("indexes", [])
        ),
        drop_columns=tuple(data.get("drop_columns", ())),
        drop_indexes=tuple(data.get("drop_indexes", ())),
    )


def _column(data: dict[str, Any]) -> Column:
    ref = data.get("references")
    return Column(
        name=data["name"],
        type=data["type"],
        not_null=data.get("not_null", False),
        default=data.get("default"),
        unique=data.get("unique", False),
        primary_key=data.get("primary_key", False),
        references=None
        if ref is None
        else ForeignKey(table=ref["table"], column=ref["column"], on_delete=ref["on_delete"]),
    )
