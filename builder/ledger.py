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

LEDGER_TABLE = "schema_migrations"
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"
STATUS_REAPPLIED = "reapplied"

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


def ensure_ledger_sql(target_schema: str) -> sql.Composed:
    """Return the statements that create the ledger and its indexes if missing, as one string."""
    table = ledger_table(target_schema)
    statements = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target_schema)),
        _CREATE_LEDGER.format(table=table),
        _CREATE_ONE_SUCCESS_INDEX.format(table=table),
        _CREATE_VERSION_INDEX.format(table=table),
    ]
    return sql.SQL(";\n").join(statements)


def ensure_ledger(conn: psycopg.Connection[Any], target_schema: str) -> None:
    """Create the ledger table and its indexes if they do not exist (call inside a transaction)."""
    # One round trip: no parameters, so the statements can go as one simple query.
    conn.execute(ensure_ledger_sql(target_schema))


_FIND_APPLIED = sql.SQL(
    'SELECT "id"::text, "version", "schema_hash", "status", "applied_at" FROM {table} '
    'WHERE "version" = {version} AND "status" = {status}'
)


def find_applied_sql(target_schema: str, version: str) -> sql.Composed:
    """Return the query for the successful row of `version` (values as quoted literals).

    Literals, not parameters, so that the query can share a round trip with other statements.
    """
    return _FIND_APPLIED.format(
        table=ledger_table(target_schema),
        version=sql.Literal(version),
        status=sql.Literal(STATUS_SUCCESS),
    )


def ledger_row(values: tuple[Any, ...] | None) -> LedgerRow | None:
    """Return the LedgerRow of a row read by `find_applied_sql`, or None."""
    if values is None:
        return None
    row_id, version, schema_hash, status, applied_at = values
    return LedgerRow(
        id=row_id, version=version, schema_hash=schema_hash, status=status, applied_at=applied_at
    )


def find_applied(
    conn: psycopg.Connection[Any], target_schema: str, version: str
) -> LedgerRow | None:
    """Return the successful row of `version`, or None."""
    query = _FIND_APPLIED.format(
        table=ledger_table(target_schema), version=sql.Placeholder(), status=sql.Placeholder()
    )
    return ledger_row(conn.execute(query, [version, STATUS_SUCCESS]).fetchone())


_INSERT_ROW = sql.SQL(
    'INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING "id"::text, "applied_at"'
)

# The time since the server received the current query message: appended to the script it
# follows, the INSERT records how long the server took to run that script.
_ELAPSED_SINCE_MS = sql.SQL("(extract(epoch FROM clock_timestamp() - {}) * 1000)::integer")
SERVER_ELAPSED_MS = _ELAPSED_SINCE_MS.format(sql.SQL("statement_timestamp()"))


def _row_values(row: NewLedgerRow) -> dict[str, Any]:
    """The row's values by column: the INSERT's columns, in its order."""
    return {
        "version": row.version,
        "description": row.description,
        "applied_by": row.applied_by,
        "checksum": row.checksum,
        "status": row.status,
        "sql_script": row.sql_script,
        "schema_hash": row.schema_hash,
        "idempotency_key": row.idempotency_key,
        "tenant_id": row.tenant_id,
        "workflow_run_id": row.workflow_run_id,
        "metadata": Jsonb(row.metadata),
        "error_message": row.error_message,
        "execution_ms": row.execution_ms,
    }


def _insert_sql(target_schema: str, values: dict[str, sql.Composable]) -> sql.Composed:
    """Return the INSERT of one row, `values` being each column's SQL value."""
    return _INSERT_ROW.format(
        table=ledger_table(target_schema),
        columns=sql.SQL(", ").join(map(sql.Identifier, values)),
        values=sql.SQL(", ").join(values.values()),
    )


def insert_row(
    conn: psycopg.Connection[Any], target_schema: str, row: NewLedgerRow
) -> tuple[str, datetime]:
    """Insert one ledger row and return its id and `applied_at`."""
    values = _row_values(row)
    query = _insert_sql(target_schema, dict.fromkeys(values, sql.Placeholder()))
    return inserted_row(conn.execute(query, list(values.values())).fetchone())


def insert_row_sql(
    target_schema: str,
    row: NewLedgerRow,
    *,
    more_metadata: dict[str, sql.Composable] | None = None,
    started: sql.Composable | None = None,
) -> sql.Composed:
    """Return the INSERT of `insert_row` with its values as quoted literals.

    It can then go in one simple query after the script it records, so `execution_ms` is the
    server's own time for that script (`SERVER_ELAPSED_MS`); `row.execution_ms` is ignored.
    `started` is a timestamptz expression for when the script began, if not with this query.
    `more_metadata` adds keys to `row.metadata` whose values are SQL expressions (jsonb) that
    the server evaluates when the row is inserted.
    """
    literals: dict[str, sql.Composable] = {k: sql.Literal(v) for k, v in _row_values(row).items()}
    literals["execution_ms"] = (
        SERVER_ELAPSED_MS if started is None else _ELAPSED_SINCE_MS.format(started)
    )
    if more_metadata:
        pairs = [sql.SQL("{}, {}").format(sql.Literal(k), v) for k, v in more_metadata.items()]
        literals["metadata"] = sql.SQL("({} || jsonb_build_object({}))").format(
            literals["metadata"], sql.SQL(", ").join(pairs)
        )
    return _insert_sql(target_schema, literals)


def inserted_row(values: tuple[Any, ...] | None) -> tuple[str, datetime]:
    """Return the id and `applied_at` of the row that an INSERT of this module returned."""
    assert values is not None  # INSERT ... RETURNING always returns the row
    return values[0], values[1]
