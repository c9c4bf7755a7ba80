"""The migration ledger: the `schema_migrations` table in the target database.

Every attempt that reached the database is recorded here with its full SQL: one row per attempt,
`success`, `failed` or `reapplied`. At most one `success` row per version (a partial unique index,
not the reference note's `UNIQUE(version, status)`, which would forbid a second failed attempt).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from builder.status import LedgerStatus

LEDGER_TABLE = "schema_migrations"

_CREATE_LEDGER = sql.SQL("""\
CREATE TABLE IF NOT EXISTS {table} (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "version" TEXT NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "applied_by" TEXT,
    "checksum" TEXT NOT NULL,
    "status" TEXT NOT NULL,
    "sql_script" TEXT NOT NULL,
    "schema_hash" TEXT NOT NULL,
    "idempotency_key" TEXT NOT NULL,
    "tenant_id" TEXT,
    "workflow_run_id" TEXT,
    "metadata" JSONB NOT NULL DEFAULT '{{}}'::JSONB,
    "error_message" TEXT,
    "applied_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "execution_ms" INTEGER,
    CONSTRAINT "schema_migrations_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "schema_migrations_status_check"
        CHECK ("status" IN ('success', 'failed', 'reapplied'))
)""")

_CREATE_ONE_SUCCESS_INDEX = sql.SQL(
    'CREATE UNIQUE INDEX IF NOT EXISTS "schema_migrations_one_success_per_version" '
    'ON {table} ("version") WHERE "status" = \'success\''
)
_CREATE_VERSION_INDEX = sql.SQL(
    'CREATE INDEX IF NOT EXISTS "schema_migrations_version_applied_at" '
    'ON {table} ("version", "applied_at")'
)


@dataclass(frozen=True)
class LedgerRow:
    """The fields of a ledger row that decisions are made on."""

    id: str
    version: str
    schema_hash: str
    status: str
    applied_at: datetime


@dataclass(frozen=True)
class NewLedgerRow:
    """Everything recorded about one attempt."""

    version: str
    description: str
    applied_by: str | None
    checksum: str
    status: str
    sql_script: str
    schema_hash: str
    idempotency_key: str
    tenant_id: str | None
    workflow_run_id: str | None
    metadata: dict[str, Any]
    error_message: str | None = None
    execution_ms: int | None = None


def ledger_table(target_schema: str) -> sql.Composable:
    """Return the qualified, quoted name of the ledger table."""
    return sql.Identifier(target_schema, LEDGER_TABLE)


def ensure_ledger(conn: psycopg.Connection[Any], target_schema: str) -> None:
    """Create the ledger table and its indexes if they do not exist (call inside a transaction)."""
    table = ledger_table(target_schema)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target_schema)))
    conn.execute(_CREATE_LEDGER.format(table=table))
    conn.execute(_CREATE_ONE_SUCCESS_INDEX.format(table=table))
    conn.execute(_CREATE_VERSION_INDEX.format(table=table))


_FIND_APPLIED = sql.SQL(
    'SELECT "id"::text, "version", "schema_hash", "status", "applied_at" FROM {table} '
    'WHERE "version" = %s AND "status" = %s'
)


def find_applied(
    conn: psycopg.Connection[Any], target_schema: str, version: str
) -> LedgerRow | None:
    """Return the successful row of `version`, or None."""
    query = _FIND_APPLIED.format(table=ledger_table(target_schema))
    values = conn.execute(query, [version, LedgerStatus.SUCCESS.value]).fetchone()
    if values is None:
        return None
    row_id, version, schema_hash, status, applied_at = values
    return LedgerRow(
        id=row_id, version=version, schema_hash=schema_hash, status=status, applied_at=applied_at
    )


_FIND_ROW = sql.SQL(
    'SELECT "id"::text, "version", "schema_hash", "status", "applied_at" FROM {table} '
    'WHERE "id" = %s'
)


def find_row(conn: psycopg.Connection[Any], target_schema: str, row_id: str) -> LedgerRow | None:
    """Return the row `row_id`, or None (also when there is no ledger yet)."""
    try:
        values = conn.execute(
            _FIND_ROW.format(table=ledger_table(target_schema)), [row_id]
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    if values is None:
        return None
    row_id, version, schema_hash, status, applied_at = values
    return LedgerRow(
        id=row_id, version=version, schema_hash=schema_hash, status=status, applied_at=applied_at
    )


_INSERT_ROW = sql.SQL(
    'INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING "id"::text, "applied_at"'
)


def insert_row(
    conn: psycopg.Connection[Any], target_schema: str, row: NewLedgerRow
) -> tuple[str, datetime]:
    """Insert one ledger row and return its id and `applied_at`."""
    values = _row_values(row)
    query = _INSERT_ROW.format(
        table=ledger_table(target_schema),
        columns=sql.SQL(", ").join(map(sql.Identifier, values)),
        values=sql.SQL(", ").join([sql.Placeholder()] * len(values)),
    )
    inserted = conn.execute(query, list(values.values())).fetchone()
    assert inserted is not None  # INSERT ... RETURNING always returns the row
    return inserted[0], inserted[1]


def _row_values(row: NewLedgerRow) -> dict[str, Any]:
    """The row's values by column: the INSERT's columns, in its order."""
    return {
        "version": row.version,
        "description": row.description,
        "applied_by": row.applied_by,
        "checksum": row.checksum,
        "status": str(row.status),
        "sql_script": row.sql_script,
        "schema_hash": row.schema_hash,
        "idempotency_key": row.idempotency_key,
        "tenant_id": row.tenant_id,
        "workflow_run_id": row.workflow_run_id,
        "metadata": Jsonb(row.metadata),
        "error_message": row.error_message,
        "execution_ms": row.execution_ms,
    }


_UPDATE_AFTER_COMMIT = sql.SQL(
    'UPDATE {table} SET "status" = %s, "error_message" = %s, "metadata" = "metadata" || %s '
    'WHERE "id" = %s'
)


def update_after_commit(
    conn: psycopg.Connection[Any],
    target_schema: str,
    ledger_id: str,
    *,
    status: LedgerStatus,
    error_message: str | None,
    metadata: dict[str, Any],
) -> None:
    """Record what happened after an apply's COMMIT (its steps, its verification) on its row."""
    conn.execute(
        _UPDATE_AFTER_COMMIT.format(table=ledger_table(target_schema)),
        [str(status), error_message, Jsonb(metadata), ledger_id],
    )
