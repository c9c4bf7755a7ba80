"""Reading the target's catalog: which of the relations a schema names exist already.

The apply reads this under its lock, before the script runs, to tell the caller which tables
and indexes it created and which it found (`CREATE ... IF NOT EXISTS` leaves those as they are).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

# Lookup by name goes through pg_class's (relname, relnamespace) index: a scan of the schema's
# relations would grow with every relation of the database.
_EXISTING_RELATIONS = """\
SELECT c.relname FROM pg_catalog.pg_class c
WHERE c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = %s)
  AND c.relname = ANY(%s::text[])
  AND c.relkind IN ('r', 'p', 'i', 'I')"""


def existing_relations(
    conn: psycopg.Connection[Any], target_schema: str, names: Iterable[str]
) -> frozenset[str]:
    """Return those of `names` that are tables or indexes in the schema `target_schema`."""
    rows = conn.execute(_EXISTING_RELATIONS, [target_schema, list(names)]).fetchall()
    return frozenset(row[0] for row in rows)


# Unique indexes (constraints included, the primary key not) of the named tables whose first
# column is not tenant_id: unique across tenants.
_GLOBAL_UNIQUE_INDEXES = """\
SELECT t.relname, i.relname, pg_catalog.pg_get_indexdef(i.oid)
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %(schema)s AND t.relname = ANY(%(tables)s::text[])
  AND x.indisunique AND NOT x.indisprimary
  AND x.indkey[0] IS DISTINCT FROM (
      SELECT a.attnum FROM pg_catalog.pg_attribute a
      WHERE a.attrelid = t.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
ORDER BY t.relname, i.relname"""

# Foreign keys between the named tables that leave tenant_id out.
_SINGLE_TENANT_FOREIGN_KEYS = """\
SELECT t.relname, c.conname, r.relname
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class t ON t.oid = c.conrelid
JOIN pg_catalog.pg_class r ON r.oid = c.confrelid
WHERE c.contype = 'f'
  AND t.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s)
  AND r.relnamespace = t.relnamespace
  AND t.relname = ANY(%(tables)s::text[]) AND r.relname = ANY(%(tables)s::text[])
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_attribute a
      WHERE a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) AND a.attname = 'tenant_id')
ORDER BY t.relname, c.conname"""


def tenant_isolation_gaps(
    conn: psycopg.Connection[Any], target_schema: str, tenant_tables: Iterable[str]
) -> list[str]:
    """Describe what, in the named tenant-scoped tables, lets one tenant reach another's data.

    The builder generates per-tenant uniqueness and composite foreign keys; a table created
    otherwise (by hand, or by an older version of the builder) keeps what it had, since
    `CREATE TABLE IF NOT EXISTS` and the named constraints' checks leave it as it is.
    """
    params = {"schema": target_schema, "tables": list(tenant_tables)}
    gaps = [
        f"Table {table!r} has the unique index {index!r} ({definition.partition(' USING ')[2]}), "
        "which is unique across tenants: a tenant can learn that another holds a value, and two "
        "tenants cannot hold the same one. Recreate it leading with tenant_id."
        for table, index, definition in conn.execute(_GLOBAL_UNIQUE_INDEXES, params)
    ]
    gaps.extend(
        f"The foreign key {constraint!r} of table {table!r} references {referenced!r} without "
        "tenant_id: a row can reference another tenant's row. Replace it with a key on "
        f"(tenant_id, ...) referencing {referenced!r} (tenant_id, id)."
        for table, constraint, referenced in conn.execute(_SINGLE_TENANT_FOREIGN_KEYS, params)
    )
    return gaps
