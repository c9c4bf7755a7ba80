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
