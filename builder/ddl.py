"""Render a normalized `Schema` as idempotent PostgreSQL DDL (text only; nothing is executed).

Like Django's schema editor, the SQL lives in module-level templates and statements that need
every table to exist (foreign keys) are deferred until after all the `CREATE TABLE`s. Output is
deterministic, so the same schema always gives the same script and the same checksum.

Every identifier is quoted through `psycopg.sql.Identifier` (which doubles embedded `"`), and every
string literal inside a `DO` block goes through `psycopg.sql.Literal`. Column types and defaults
are canonical SQL built by the normalizer from allow lists and are rendered verbatim.

Corrections to the reference note: no `CREATE EXTENSION pgcrypto` (`gen_random_uuid()` is built in
since PostgreSQL 13); policies are created idempotently by a `DO` block because `CREATE POLICY IF
NOT EXISTS` does not exist; the policy predicate never casts `tenant_id` (so its index is usable),
has `WITH CHECK`, and RLS is forced so the table owner is filtered too; `updated_at` is maintained
by a trigger.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, replace

from psycopg import sql

from builder import names
from builder.spec import ON_DELETE_ACTIONS, Column, ForeignKey, Schema, Table
from builder.sqlcheck import check_statements

TENANT_COLUMN = "tenant_id"
UPDATED_AT_COLUMN = "updated_at"
TENANT_SETTING = "app.current_tenant_id"
DOLLAR_TAG = "wf106"

# The tenant of the session, or NULL (no rows) when none is set. The sub-select makes PostgreSQL
# evaluate it once per statement (an InitPlan), and the column is never cast, so an index on
# `tenant_id` can be used.
TENANT_PREDICATE = "{column} = (SELECT nullif(current_setting({setting}, true), '')::uuid)"

SQL_HEADER = "-- WF106 schema v{version}: {description}"
SQL_CREATE_UPDATED_AT_FUNCTION = (
    "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger\n    LANGUAGE plpgsql AS {body}"
)
SQL_UPDATED_AT_FUNCTION_BODY = "\nBEGIN\n    NEW.updated_at := now();\n    RETURN NEW;\nEND\n"
SQL_CREATE_TABLE = "CREATE TABLE IF NOT EXISTS {table} (\n{definition}\n)"
SQL_COLUMN = "    {column} {type}"
SQL_PRIMARY_KEY = "    CONSTRAINT {name} PRIMARY KEY ({columns})"
SQL_UNIQUE = "    CONSTRAINT {name} UNIQUE ({columns})"
SQL_CREATE_INDEX = "CREATE {unique}INDEX IF NOT EXISTS {name} ON {table} ({columns})"
SQL_ENABLE_RLS = "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"
SQL_FORCE_RLS = "ALTER TABLE {table} FORCE ROW LEVEL SECURITY"
SQL_DO = "DO {body}"
SQL_IF_NOT_EXISTS_BODY = (
    "\nBEGIN\n    IF NOT EXISTS (\n{check}\n    ) THEN\n{action};\n    END IF;\nEND\n"
)
SQL_POLICY_EXISTS = (
    "        SELECT 1 FROM pg_catalog.pg_policies\n"
    "        WHERE schemaname = {schema}\n"
    "            AND tablename = {table}\n"
    "            AND policyname = {policy}"
)
SQL_CREATE_POLICY = (
    "        CREATE POLICY {name} ON {table}\n"
    "            AS PERMISSIVE FOR ALL\n"
    "            USING ({predicate})\n"
    "            WITH CHECK ({predicate})"
)
SQL_CONSTRAINT_EXISTS = (
    "        SELECT 1 FROM pg_catalog.pg_constraint\n"
    "        WHERE conrelid = {table}::regclass\n"
    "            AND conname = {name}"
)
SQL_ADD_FOREIGN_KEY = (
    "        ALTER TABLE {table} ADD CONSTRAINT {name}\n"
    "            FOREIGN KEY ({column}) REFERENCES {to_table} ({to_column}) ON DELETE {on_delete}"
)
SQL_CREATE_UPDATED_AT_TRIGGER = (
    "CREATE OR REPLACE TRIGGER {name} BEFORE UPDATE ON {table}\n"
    "    FOR EACH ROW EXECUTE FUNCTION {function}()"
)


@dataclass(frozen=True)
class Migration:
    """The rendered DDL of one schema version.

    `statements` have no trailing `;`. `script` is what is stored in the ledger (and may be
    executed as one string): a header comment, then every statement ending in `;`, separated by
    blank lines, without BEGIN/COMMIT (the caller owns the transaction). `checksum` is the SHA-256
    hex digest of `script`.
    """

    statements: tuple[str, ...]
    script: str
    checksum: str
    checked: int
    """How many of `statements`, from the first, have passed the parser check: all of them,
    unless rendered with `defer_check` and not `check_rest`-ed since."""

    @property
    def fully_checked(self) -> bool:
        return self.checked == len(self.statements)

    def check_rest(self) -> Migration:
        """Check the statements not checked yet; return the migration with all of them checked.

        Raise `UnsafeSQLError` if one does not pass (a builder bug).
        """
        if self.fully_checked:
            return self
        check_statements(self.statements[self.checked :])
        return replace(self, checked=len(self.statements))

    def checked_length(self) -> int:
        """Return the length of the text at the start of `script` that holds the header and
        exactly the checked statements (each with its `;`): `script[:n]` may be run on its own,
        and `script[n:]` holds the rest (`render_script`'s layout)."""
        # The script ends with "\n\n<statement>;" for each statement, then "\n".
        return len(self.script) - 1 - sum(len(s) + 3 for s in self.statements[self.checked :])


CHECKED_AHEAD_MIN = 8
"""`defer_check` checks every statement up front for a migration of fewer statements than this."""

CHECKED_AHEAD_FRACTION = 8
"""`defer_check` checks the first 1/N of the statements up front (at least one)."""


def render_migration(
    schema: Schema, *, target_schema: str = "public", defer_check: bool = False
) -> Migration:
    """Render `schema` as an idempotent migration into the PostgreSQL schema `target_schema`.

    Raise `UnsafeSQLError` if a statement does not pass the parser check (a builder bug). With
    `defer_check`, only the first statements (1/`CHECKED_AHEAD_FRACTION` of them) are checked:
    an apply runs them while it checks the rest (`Migration.check_rest`), and must not send a
    statement that is not checked.
    """
    _check_schema_name(target_schema)
    tables = order_tables(schema)
    statements: list[str] = []
    if any(t.column(UPDATED_AT_COLUMN) is not None for t in tables):
        statements.append(render_updated_at_function(target_schema))
    for table in tables:
        statements.append(render_create_table(table, target_schema))
        statements.extend(render_indexes(table, target_schema))
        if table.tenant_scoped:
            statements.extend(render_tenant_policy(table, target_schema))
        if table.column(UPDATED_AT_COLUMN) is not None:
            statements.append(render_updated_at_trigger(table, target_schema))
    for table in tables:
        statements.extend(
            render_foreign_key(table, column, column.references, target_schema)
            for column in table.columns
            if column.references is not None
        )
    checked = len(statements)
    if defer_check and checked >= CHECKED_AHEAD_MIN:
        checked = -(-checked // CHECKED_AHEAD_FRACTION)
    check_statements(statements[:checked])
    script = render_script(schema, statements)
    checksum = hashlib.sha256(script.encode()).hexdigest()
    return Migration(
        statements=tuple(statements), script=script, checksum=checksum, checked=checked
    )


def render_script(schema: Schema, statements: Sequence[str]) -> str:
    """Join `statements` into a script under a header comment naming the schema version."""
    header = SQL_HEADER.format(
        version=_comment_text(schema.version), description=_comment_text(schema.description)
    )
    return "\n\n".join([header, *(f"{statement};" for statement in statements)]) + "\n"


def order_tables(schema: Schema) -> tuple[Table, ...]:
    """Return the tables so that each comes after the tables its foreign keys reference.

    Take the first table, in input order, whose references are all placed; when none is (a
    reference cycle), take the first table in input order that lies on a cycle. References to the
    table itself or to tables outside `schema` are ignored (foreign keys are added at the end).
    """
    tables = schema.tables
    known = {table.name for table in tables}
    position = {table.name: i for i, table in enumerate(tables)}
    pending = {t.name: _dependencies(t, known) - {t.name} for t in tables}
    dependents: dict[str, list[str]] = {t.name: [] for t in tables}
    for name, dependencies in pending.items():
        for dependency in dependencies:
            dependents[dependency].append(name)
    # A heap of the input positions of the ready tables: "first ready in input order" in
    # O(n log n), where rescanning the remaining tables each time was quadratic.
    ready = [position[name] for name, dependencies in pending.items() if not dependencies]
    heapq.heapify(ready)
    placed: set[str] = set()
    ordered: list[Table] = []
    while len(ordered) < len(tables):
        if ready:
            table = tables[heapq.heappop(ready)]
        else:  # a reference cycle: rare, so a scan is fine
            table = next(t for t in tables if t.name not in placed and _on_cycle(t.name, pending))
        if table.name in placed:
            continue
        placed.add(table.name)
        ordered.append(table)
        for dependent in dependents[table.name]:
            pending[dependent].discard(table.name)
            if not pending[dependent] and dependent not in placed:
                heapq.heappush(ready, position[dependent])
    return tuple(ordered)


def render_updated_at_function(target_schema: str) -> str:
    """Return the `CREATE OR REPLACE FUNCTION` of the trigger function that sets `updated_at`."""
    return SQL_CREATE_UPDATED_AT_FUNCTION.format(
        function=_qualified(target_schema, names.UPDATED_AT_FUNCTION),
        body=_dollar_quote(SQL_UPDATED_AT_FUNCTION_BODY),
    )


def render_create_table(table: Table, target_schema: str) -> str:
    """Return the `CREATE TABLE IF NOT EXISTS` of `table`, without its foreign keys."""
    lines = [render_column(column) for column in table.columns]
    primary_key = [c.name for c in table.columns if c.primary_key]
    if primary_key:
        lines.append(
            SQL_PRIMARY_KEY.format(
                name=_quote(names.primary_key_name(table.name)), columns=_quote_list(primary_key)
            )
        )
    lines.extend(
        SQL_UNIQUE.format(
            name=_quote(names.unique_constraint_name(table.name, c.name)),
            columns=_quote(c.name),
        )
        for c in table.columns
        if c.unique and not c.primary_key
    )
    return SQL_CREATE_TABLE.format(
        table=_qualified(target_schema, table.name), definition=",\n".join(lines)
    )


def render_column(column: Column) -> str:
    """Return the definition line of `column` (NOT NULL is implied for a primary key column)."""
    not_null = column.not_null and not column.primary_key
    return _column_line(column.name, column.type, not_null, column.default)


# Pure, and the same column definitions (`id`, `tenant_id`, `created_at`, ...) come back in
# table after table of a schema.
@functools.lru_cache(maxsize=4096)
def _column_line(name: str, sql_type: str, not_null: bool, default: str | None) -> str:
    line = SQL_COLUMN.format(column=_quote(name), type=sql_type)
    if not_null:
        line += " NOT NULL"
    if default is not None:
        line += f" DEFAULT {default}"
    return line


def render_indexes(table: Table, target_schema: str) -> list[str]:
    """Return one `CREATE [UNIQUE] INDEX IF NOT EXISTS` per index of `table`, in order."""
    return [
        SQL_CREATE_INDEX.format(
            unique="UNIQUE " if index.unique else "",
            name=_quote(index.name),
            table=_qualified(target_schema, table.name),
            columns=_quote_list(index.columns),
        )
        for index in table.indexes
    ]


def render_tenant_policy(table: Table, target_schema: str) -> list[str]:
    """Return the statements that enable and force RLS on `table` and create its tenant policy."""
    if table.column(TENANT_COLUMN) is None:
        raise ValueError(f"tenant-scoped table {table.name!r} has no {TENANT_COLUMN} column")
    qualified = _qualified(target_schema, table.name)
    policy = names.policy_name(table.name)
    predicate = TENANT_PREDICATE.format(
        column=_quote(TENANT_COLUMN), setting=_literal(TENANT_SETTING)
    )
    check = SQL_POLICY_EXISTS.format(
        schema=_literal(target_schema), table=_literal(table.name), policy=_literal(policy)
    )
    action = SQL_CREATE_POLICY.format(name=_quote(policy), table=qualified, predicate=predicate)
    return [
        SQL_ENABLE_RLS.format(table=qualified),
        SQL_FORCE_RLS.format(table=qualified),
        _do_if_not_exists(check, action),
    ]


def render_updated_at_trigger(table: Table, target_schema: str) -> str:
    """Return the `CREATE OR REPLACE TRIGGER` that keeps `updated_at` current on `table`."""
    return SQL_CREATE_UPDATED_AT_TRIGGER.format(
        name=_quote(names.updated_at_trigger_name(table.name)),
        table=_qualified(target_schema, table.name),
        function=_qualified(target_schema, names.UPDATED_AT_FUNCTION),
    )


def render_foreign_key(
    table: Table, column: Column, reference: ForeignKey, target_schema: str
) -> str:
    """Return a `DO` block that adds the foreign key of `column` unless it already exists."""
    if reference.on_delete not in ON_DELETE_ACTIONS:
        raise ValueError(f"unknown ON DELETE action {reference.on_delete!r}")
    qualified = _qualified(target_schema, table.name)
    constraint = names.foreign_key_name(table.name, column.name)
    check = SQL_CONSTRAINT_EXISTS.format(table=_literal(qualified), name=_literal(constraint))
    action = SQL_ADD_FOREIGN_KEY.format(
        table=qualified,
        name=_quote(constraint),
        column=_quote(column.name),
        to_table=_qualified(target_schema, reference.table),
        to_column=_quote(reference.column),
        on_delete=reference.on_delete,
    )
    return _do_if_not_exists(check, action)


def _dependencies(table: Table, known: set[str]) -> set[str]:
    return {
        c.references.table
        for c in table.columns
        if c.references is not None and c.references.table in known
    }


def _on_cycle(name: str, pending: dict[str, set[str]]) -> bool:
    """Return True if `name` can reach itself through the `pending` references."""
    seen: set[str] = set()
    stack = list(pending[name])
    while stack:
        current = stack.pop()
        if current == name:
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(pending[current])
    return False


def _do_if_not_exists(check: str, action: str) -> str:
    body = SQL_IF_NOT_EXISTS_BODY.format(check=check, action=action)
    return SQL_DO.format(body=_dollar_quote(body))


def _dollar_quote(body: str) -> str:
    tag = _dollar_tag(body)
    return f"{tag}{body}{tag}"


def _dollar_tag(body: str) -> str:
    """Return `$wf106$`, or a numbered variant if the body happens to contain it."""
    tag, n = f"${DOLLAR_TAG}$", 0
    while tag in body:
        n += 1
        tag = f"${DOLLAR_TAG}_{n}$"
    return tag


# The quoting helpers are pure and called tens of thousands of times for a large schema, mostly
# with the same few names (column names repeat in every table, a table's name in each of its
# statements), and psycopg's `sql` objects are comparatively slow to build and render, so the
# results are cached. The bounds keep memory small whatever the schema.
@functools.lru_cache(maxsize=4096)
def _quote(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def _quote_list(columns: tuple[str, ...] | list[str]) -> str:
    return ", ".join([_quote(c) for c in columns])


@functools.lru_cache(maxsize=2048)
def _qualified(schema_name: str, name: str) -> str:
    return sql.Identifier(schema_name, name).as_string(None)


@functools.lru_cache(maxsize=2048)
def _literal(value: str) -> str:
    return sql.Literal(value).as_string(None).strip()


def _comment_text(text: str) -> str:
    """Return `text` on one line, without anything that could end a comment early."""
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(printable.split()).replace("*/", "* /")


def _check_schema_name(target_schema: str) -> None:
    if not target_schema or len(target_schema.encode()) > names.MAX_IDENTIFIER_BYTES:
        raise ValueError(f"invalid target schema name {target_schema!r}")
