"""Read the target's catalog into the builder's own types: what the tables are now.

`read_catalog` reads the tables of one PostgreSQL schema (all of them, or the named ones) with
their columns, indexes, constraints, row level security, policies and triggers in a fixed
number of queries, whatever the number of tables: one per kind of object, each filtered by the
schema's namespace and, when given, the table names. The planner (`builder.evolve.plan`)
compares these types with a normalized `Schema`; nothing here decides anything.

Types and defaults are kept as PostgreSQL prints them (`format_type`, `pg_get_expr`);
`builder.evolve.compare` knows how the builder's canonical SQL reads back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class LiveColumn:
    name: str
    type: str
    not_null: bool
    default: str | None


@dataclass(frozen=True)
class LiveIndex:
    """An index; `constraint` names the primary key or unique constraint it backs, if any."""

    name: str
    columns: tuple[str, ...]
    unique: bool
    primary: bool
    valid: bool
    partial: bool
    definition: str
    constraint: str | None = None

    @property
    def plain_columns(self) -> bool:
        """Whether every key of the index is a column (no expression, no predicate)."""
        return not self.partial and "" not in self.columns


@dataclass(frozen=True)
class LiveForeignKey:
    name: str
    columns: tuple[str, ...]
    to_table: str
    to_columns: tuple[str, ...]
    on_delete: str
    validated: bool
    definition: str


@dataclass(frozen=True)
class LiveCheck:
    name: str
    validated: bool
    definition: str


@dataclass(frozen=True)
class LivePolicy:
    name: str
    command: str
    permissive: bool
    using: str | None
    with_check: str | None


@dataclass(frozen=True)
class LiveTrigger:
    name: str
    enabled: bool
    function: str


@dataclass(frozen=True)
class LiveTable:
    name: str
    partitioned: bool = False
    columns: tuple[LiveColumn, ...] = ()
    indexes: tuple[LiveIndex, ...] = ()
    foreign_keys: tuple[LiveForeignKey, ...] = ()
    checks: tuple[LiveCheck, ...] = ()
    rls_enabled: bool = False
    rls_forced: bool = False
    policies: tuple[LivePolicy, ...] = ()
    triggers: tuple[LiveTrigger, ...] = ()

    def column(self, name: str) -> LiveColumn | None:
        return next((c for c in self.columns if c.name == name), None)

    def index(self, name: str) -> LiveIndex | None:
        return next((i for i in self.indexes if i.name == name), None)

    def foreign_key(self, name: str) -> LiveForeignKey | None:
        return next((f for f in self.foreign_keys if f.name == name), None)

    def policy(self, name: str) -> LivePolicy | None:
        return next((p for p in self.policies if p.name == name), None)

    def trigger(self, name: str) -> LiveTrigger | None:
        return next((t for t in self.triggers if t.name == name), None)

    def check(self, name: str) -> LiveCheck | None:
        return next((c for c in self.checks if c.name == name), None)

    def unique_over(self, columns: Iterable[str]) -> LiveIndex | None:
        """A valid unique index on exactly `columns` (in any order), without predicate."""
        wanted = sorted(columns)
        return next(
            (
                i
                for i in self.indexes
                if i.unique and i.valid and i.plain_columns and sorted(i.columns) == wanted
            ),
            None,
        )


@dataclass(frozen=True)
class Catalog:
    """The tables of one schema (`tables` by name), and its functions' names."""

    schema: str
    tables: dict[str, LiveTable] = field(default_factory=dict)
    functions: frozenset[str] = frozenset()

    def table(self, name: str) -> LiveTable | None:
        return self.tables.get(name)


EMPTY_CATALOG = Catalog(schema="public")
"""A database without tables: what `prepare` plans against when no target is at hand."""

_ON_DELETE = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}

# Every query reads the same set of tables: the schema's ordinary and partitioned tables, all
# of them or those named (a NULL array reads all).
_TABLES_CTE = sql.SQL("""\
WITH t AS (
    SELECT c.oid, c.relname FROM pg_catalog.pg_class c
    WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s)
      AND c.relkind IN ('r', 'p')
      AND (%(names)s::text[] IS NULL OR c.relname = ANY(%(names)s::text[]))
)
""")

_TABLES = sql.SQL("""{tables}
SELECT t.relname, c.relkind = 'p', c.relrowsecurity, c.relforcerowsecurity
FROM t JOIN pg_catalog.pg_class c ON c.oid = t.oid""").format(tables=_TABLES_CTE)

_COLUMNS = sql.SQL("""{tables}
SELECT t.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid)
FROM t
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
ORDER BY t.relname, a.attnum""").format(tables=_TABLES_CTE)

# An expression key reads as an empty name.
_INDEXES = sql.SQL("""{tables}
SELECT t.relname, i.relname, x.indisunique, x.indisprimary, x.indisvalid AND x.indisready,
       x.indpred IS NOT NULL,
       ARRAY(SELECT coalesce(a.attname, '')
             FROM unnest(x.indkey[0:x.indnkeyatts - 1]) WITH ORDINALITY k(attnum, ord)
             LEFT JOIN pg_catalog.pg_attribute a
               ON a.attrelid = x.indrelid AND a.attnum = k.attnum AND k.attnum > 0
             ORDER BY k.ord),
       pg_catalog.pg_get_indexdef(x.indexrelid), con.conname
FROM t
JOIN pg_catalog.pg_index x ON x.indrelid = t.oid
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
LEFT JOIN pg_catalog.pg_constraint con
  ON con.conindid = x.indexrelid AND con.conrelid = t.oid AND con.contype IN ('p', 'u')
ORDER BY t.relname, i.relname""").format(tables=_TABLES_CTE)

_CONSTRAINTS = sql.SQL("""{tables}
SELECT t.relname, con.conname, con.contype, con.convalidated,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.ord),
       r.relname,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
             ORDER BY k.ord),
       con.confdeltype, pg_catalog.pg_get_constraintdef(con.oid)
FROM t
JOIN pg_catalog.pg_constraint con ON con.conrelid = t.oid AND con.contype IN ('f', 'c')
LEFT JOIN pg_catalog.pg_class r ON r.oid = con.confrelid
ORDER BY t.relname, con.conname""").format(tables=_TABLES_CTE)

_POLICIES = sql.SQL("""{tables}
SELECT t.relname, p.polname, p.polcmd, p.polpermissive,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
FROM t JOIN pg_catalog.pg_policy p ON p.polrelid = t.oid
ORDER BY t.relname, p.polname""").format(tables=_TABLES_CTE)

_TRIGGERS = sql.SQL("""{tables}
SELECT t.relname, g.tgname, g.tgenabled <> 'D', f.proname
FROM t
JOIN pg_catalog.pg_trigger g ON g.tgrelid = t.oid AND NOT g.tgisinternal
JOIN pg_catalog.pg_proc f ON f.oid = g.tgfoid
ORDER BY t.relname, g.tgname""").format(tables=_TABLES_CTE)

_FUNCTIONS = """\
SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p
WHERE p.pronamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s)
  AND p.proname = ANY(%(functions)s::text[])"""


def read_catalog(
    conn: psycopg.Connection[Any],
    target_schema: str,
    tables: Iterable[str] | None = None,
    *,
    functions: Iterable[str] = (),
) -> Catalog:
    """Read the tables of `target_schema` (only those named in `tables`, if given).

    Seven queries whatever the number of tables. `functions` names the functions whose
    existence in the schema is read too (`Catalog.functions`).
    """
    params = {
        "schema": target_schema,
        "names": None if tables is None else sorted(set(tables)),
        "functions": list(functions),
    }
    found: dict[str, dict[str, Any]] = {}
    for name, partitioned, rls, forced in conn.execute(_TABLES, params):
        found[name] = {
            "name": name,
            "partitioned": partitioned,
            "rls_enabled": rls,
            "rls_forced": forced,
            "columns": [],
            "indexes": [],
            "foreign_keys": [],
            "checks": [],
            "policies": [],
            "triggers": [],
        }
    if found:
        _read_parts(conn, params, found)
    function_names: frozenset[str] = frozenset()
    if params["functions"]:
        function_names = frozenset(r[0] for r in conn.execute(_FUNCTIONS, params))
    return Catalog(
        schema=target_schema,
        tables={
            name: LiveTable(
                name=name,
                partitioned=values["partitioned"],
                rls_enabled=values["rls_enabled"],
                rls_forced=values["rls_forced"],
                columns=tuple(values["columns"]),
                indexes=tuple(values["indexes"]),
                foreign_keys=tuple(values["foreign_keys"]),
                checks=tuple(values["checks"]),
                policies=tuple(values["policies"]),
                triggers=tuple(values["triggers"]),
            )
            for name, values in found.items()
        },
        functions=function_names,
    )


def _read_parts(
    conn: psycopg.Connection[Any], params: dict[str, Any], found: dict[str, dict[str, Any]]
) -> None:
    for table, name, type_, not_null, default in conn.execute(_COLUMNS, params):
        found[table]["columns"].append(LiveColumn(name, type_, not_null, default))
    for (
        table,
        name,
        unique,
        primary,
        valid,
        partial,
        columns,
        definition,
        constraint,
    ) in conn.execute(_INDEXES, params):
        found[table]["indexes"].append(
            LiveIndex(
                name=name,
                columns=tuple(columns),
                unique=unique,
                primary=primary,
                valid=valid,
                partial=partial,
                definition=definition,
                constraint=constraint,
            )
        )
    for (
        table,
        name,
        kind,
        validated,
        columns,
        to_table,
        to_columns,
        deltype,
        definition,
    ) in conn.execute(_CONSTRAINTS, params):
        if kind == "f":
            found[table]["foreign_keys"].append(
                LiveForeignKey(
                    name=name,
                    columns=tuple(columns),
                    to_table=to_table,
                    to_columns=tuple(to_columns),
                    on_delete=_ON_DELETE.get(deltype, deltype),
                    validated=validated,
                    definition=definition,
                )
            )
        else:
            found[table]["checks"].append(LiveCheck(name, validated, definition))
    for table, name, command, permissive, using, with_check in conn.execute(_POLICIES, params):
        found[table]["policies"].append(LivePolicy(name, command, permissive, using, with_check))
    for table, name, enabled, function in conn.execute(_TRIGGERS, params):
        found[table]["triggers"].append(LiveTrigger(name, enabled, function))


_HAS_ROWS = sql.SQL(
    "SELECT {name}, EXISTS (SELECT 1 FROM {table}) OR coalesce("
    "(SELECT c.reltuples > 0 FROM pg_catalog.pg_class c WHERE c.oid = {regclass}::regclass), false)"
)


def tables_with_rows(
    conn: psycopg.Connection[Any], target_schema: str, tables: Iterable[str]
) -> frozenset[str]:
    """Return those of `tables` (which exist) that hold rows, in one query.

    A role subject to a forced row level security policy sees no rows without a tenant; the
    planner's estimate (`reltuples`, kept by VACUUM and ANALYZE) is read too, so such a table
    still counts as holding rows once it has been analyzed. The builder's role is expected to
    own the tables and bypass row level security (see the README).
    """
    names = sorted(set(tables))
    if not names:
        return frozenset()
    parts = [
        _HAS_ROWS.format(
            name=sql.Literal(name),
            table=sql.Identifier(target_schema, name),
            regclass=sql.Literal(sql.Identifier(target_schema, name).as_string(None)),
        )
        for name in names
    ]
    query = sql.SQL(" UNION ALL ").join(parts)
    return frozenset(name for name, has_rows in conn.execute(query) if has_rows)
