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
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from builder.schema import names
from builder.schema.spec import ON_DELETE_ACTIONS, Column, ForeignKey, Index, Schema, Table
from builder.sql.check import check_statements

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
SQL_CREATE_INDEX = "CREATE {unique}INDEX {name} ON {table} ({columns})"
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
    "            FOREIGN KEY ({columns}) REFERENCES {to_table} ({to_columns}) ON DELETE {on_delete}"
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


def render_migration(schema: Schema, *, target_schema: str = "public") -> Migration:
    """Render `schema` as an idempotent migration into the PostgreSQL schema `target_schema`.

    Tables come in the caller's order: no `CREATE TABLE` depends on another, since every foreign
    key is added after all of them. Raise `UnsafeSQLError` if a statement does not pass the
    parser check (a builder bug).
    """
    _check_schema_name(target_schema)
    tables = schema.tables
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
    tenant_scoped = {table.name: table.tenant_scoped for table in tables}
    for table in tables:
        statements.extend(
            render_foreign_key(
                table,
                column,
                column.references,
                target_schema,
                to_tenant_scoped=tenant_scoped.get(column.references.table, False),
            )
            for column in table.columns
            if column.references is not None
        )
    check_statements(statements)
    script = render_script(schema, statements)
    checksum = hashlib.sha256(script.encode()).hexdigest()
    return Migration(statements=tuple(statements), script=script, checksum=checksum)


def render_script(schema: Schema, statements: Sequence[str]) -> str:
    """Join `statements` into a script under a header comment naming the schema version."""
    header = SQL_HEADER.format(
        version=_comment_text(schema.version), description=_comment_text(schema.description)
    )
    return "\n\n".join([header, *(f"{statement};" for statement in statements)]) + "\n"


def render_updated_at_function(target_schema: str) -> str:
    """Return the `CREATE OR REPLACE FUNCTION` of the trigger function that sets `updated_at`."""
    return SQL_CREATE_UPDATED_AT_FUNCTION.format(
        function=_qualified(target_schema, names.UPDATED_AT_FUNCTION),
        body=_dollar_quote(SQL_UPDATED_AT_FUNCTION_BODY),
    )


def render_create_table(table: Table, target_schema: str) -> str:
    """Return the `CREATE TABLE IF NOT EXISTS` of `table`, without its foreign keys.

    A tenant-scoped table also gets `UNIQUE (tenant_id, <primary key>)`, which the composite
    foreign keys of other tenant-scoped tables reference, and its `unique` columns are unique per
    tenant (`UNIQUE (tenant_id, <column>)`).
    """
    lines = [render_column(column) for column in table.columns]
    primary_key = [c.name for c in table.columns if c.primary_key]
    if primary_key:
        lines.append(
            SQL_PRIMARY_KEY.format(
                name=_quote(names.primary_key_name(table.name)), columns=_quote_list(primary_key)
            )
        )
        if table.tenant_scoped:
            lines.append(
                SQL_UNIQUE.format(
                    name=_quote(names.tenant_key_name(table.name)),
                    columns=_quote_list(unique_columns(table, primary_key)),
                )
            )
    lines.extend(
        SQL_UNIQUE.format(
            name=_quote(names.unique_constraint_name(table.name, c.name)),
            columns=_quote_list(unique_columns(table, [c.name])),
        )
        for c in table.columns
        if c.unique and not c.primary_key
    )
    return SQL_CREATE_TABLE.format(
        table=_qualified(target_schema, table.name), definition=",\n".join(lines)
    )


def unique_columns(table: Table, columns: Sequence[str]) -> list[str]:
    """Return the columns a uniqueness of `columns` covers: led by `tenant_id` in a tenant table.

    A value that is unique across tenants would let one tenant find out, by a unique violation,
    that another holds it, and would keep two tenants from holding the same value.
    """
    if not table.tenant_scoped:
        return list(columns)
    return [TENANT_COLUMN, *(c for c in columns if c != TENANT_COLUMN)]


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
    """Return one `CREATE [UNIQUE] INDEX IF NOT EXISTS` per index of `table`, in order.

    A unique index of a tenant-scoped table is unique per tenant: it leads with `tenant_id`.
    """
    return [render_create_index(table, index, target_schema) for index in table.indexes]


def index_columns(table: Table, index: Index) -> list[str]:
    """The key columns of `index` as built (a tenant table's unique index leads with tenant_id)."""
    return unique_columns(table, index.columns) if index.unique else list(index.columns)


def render_create_index(
    table: Table, index: Index, target_schema: str, *, concurrently: bool = False
) -> str:
    """Return the `CREATE [UNIQUE] INDEX [CONCURRENTLY] IF NOT EXISTS` of one index."""
    return SQL_CREATE_INDEX.format(
        unique="UNIQUE " if index.unique else "",
        name=("CONCURRENTLY " if concurrently else "") + "IF NOT EXISTS " + _quote(index.name),
        table=_qualified(target_schema, table.name),
        columns=_quote_list(index_columns(table, index)),
    )


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
    table: Table,
    column: Column,
    reference: ForeignKey,
    target_schema: str,
    *,
    to_tenant_scoped: bool = False,
) -> str:
    """Return a `DO` block that adds the foreign key of `column` unless it already exists.

    Between two tenant-scoped tables the key is composite, `(tenant_id, column) REFERENCES
    to_table (tenant_id, to_column)`: PostgreSQL checks foreign keys without row level security,
    so a single-column key would let a row of one tenant reference another tenant's row. Its
    `SET NULL` and `SET DEFAULT` actions name the column, so that `tenant_id` is never changed.
    """
    if reference.on_delete not in ON_DELETE_ACTIONS:
        raise ValueError(f"unknown ON DELETE action {reference.on_delete!r}")
    if to_tenant_scoped and not table.tenant_scoped:
        raise ValueError(f"global table {table.name!r} references a tenant-scoped table")
    qualified = _qualified(target_schema, table.name)
    constraint = names.foreign_key_name(table.name, column.name)
    check = SQL_CONSTRAINT_EXISTS.format(table=_literal(qualified), name=_literal(constraint))
    columns, to_columns, on_delete = [column.name], [reference.column], reference.on_delete
    if to_tenant_scoped:
        columns, to_columns = [TENANT_COLUMN, column.name], [TENANT_COLUMN, reference.column]
        if on_delete in ("SET NULL", "SET DEFAULT"):
            on_delete = f"{on_delete} ({_quote(column.name)})"
    action = SQL_ADD_FOREIGN_KEY.format(
        table=qualified,
        name=_quote(constraint),
        columns=_quote_list(columns),
        to_table=_qualified(target_schema, reference.table),
        to_columns=_quote_list(to_columns),
        on_delete=on_delete,
    )
    return _do_if_not_exists(check, action)


# --- changing existing tables (`builder.evolve.plan`) --------------------------------------------

SQL_ALTER_TABLE = "ALTER TABLE {table} {action}"
SQL_ADD_COLUMN = "ADD COLUMN IF NOT EXISTS {definition}"
SQL_ALTER_TYPE = "ALTER COLUMN {column} TYPE {type} USING {column}::{type}"
SQL_SET_NOT_NULL = "ALTER COLUMN {column} SET NOT NULL"
SQL_DROP_NOT_NULL = "ALTER COLUMN {column} DROP NOT NULL"
SQL_SET_DEFAULT = "ALTER COLUMN {column} SET DEFAULT {default}"
SQL_DROP_DEFAULT = "ALTER COLUMN {column} DROP DEFAULT"
SQL_ADD_NOT_NULL_CHECK = "ADD CONSTRAINT {name} CHECK ({column} IS NOT NULL) NOT VALID"
SQL_ADD_UNIQUE = "ADD CONSTRAINT {name} UNIQUE ({columns})"
SQL_ADD_FOREIGN_KEY_NOT_VALID = (
    "ADD CONSTRAINT {name} FOREIGN KEY ({columns}) REFERENCES {to_table} ({to_columns}) "
    "ON DELETE {on_delete} NOT VALID"
)
SQL_VALIDATE_CONSTRAINT = "VALIDATE CONSTRAINT {name}"
SQL_DROP_CONSTRAINT = "DROP CONSTRAINT IF EXISTS {name}"
SQL_DROP_COLUMN = "DROP COLUMN IF EXISTS {column}"
SQL_ENABLE_TRIGGER = "ENABLE TRIGGER {name}"
SQL_DROP_INDEX = "DROP INDEX {concurrently}IF EXISTS {name}"
SQL_DROP_TABLE = "DROP TABLE IF EXISTS {table}"


def render_alter(table: str, target_schema: str, template: str, **parts: str) -> str:
    """Return `ALTER TABLE <table> <action>`, the action filled from `template` and `parts`.

    `parts` are SQL already quoted by the helpers of this module (names with `quote_name`).
    """
    action = template.format(**parts)
    return SQL_ALTER_TABLE.format(table=_qualified(target_schema, table), action=action)


def quote_name(name: str) -> str:
    """Return `name` quoted as an SQL identifier."""
    return _quote(name)


def quote_names(columns: Sequence[str]) -> str:
    """Return `columns` quoted and joined with commas."""
    return _quote_list(list(columns))


def qualified_name(target_schema: str, name: str) -> str:
    """Return `schema.name`, both quoted."""
    return _qualified(target_schema, name)


def render_add_column(table: Table, column: Column, target_schema: str) -> str:
    """Return the `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` of `column`."""
    return render_alter(
        table.name, target_schema, SQL_ADD_COLUMN, definition=render_column(column).strip()
    )


def render_foreign_key_not_valid(
    table: Table, column: Column, reference: ForeignKey, target_schema: str, *, composite: bool
) -> str:
    """Return the `ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID` of `column` on an existing table.

    `NOT VALID` adds the key without reading the table's rows (new rows are checked at once);
    `VALIDATE CONSTRAINT` reads them afterwards under a lock that lets writes go on.
    """
    columns, to_columns, on_delete = [column.name], [reference.column], reference.on_delete
    if composite:
        columns, to_columns = [TENANT_COLUMN, column.name], [TENANT_COLUMN, reference.column]
        if on_delete in ("SET NULL", "SET DEFAULT"):
            on_delete = f"{on_delete} ({_quote(column.name)})"
    if reference.on_delete not in ON_DELETE_ACTIONS:
        raise ValueError(f"unknown ON DELETE action {reference.on_delete!r}")
    return render_alter(
        table.name,
        target_schema,
        SQL_ADD_FOREIGN_KEY_NOT_VALID,
        name=_quote(names.foreign_key_name(table.name, column.name)),
        columns=_quote_list(columns),
        to_table=_qualified(target_schema, reference.table),
        to_columns=_quote_list(to_columns),
        on_delete=on_delete,
    )


def render_create_policy(table: Table, target_schema: str) -> str:
    """Return the `CREATE POLICY` of `table`'s tenant isolation policy (known to be missing)."""
    predicate = TENANT_PREDICATE.format(
        column=_quote(TENANT_COLUMN), setting=_literal(TENANT_SETTING)
    )
    return SQL_CREATE_POLICY.format(
        name=_quote(names.policy_name(table.name)),
        table=_qualified(target_schema, table.name),
        predicate=predicate,
    ).strip()


def render_enable_rls(table: str, target_schema: str, *, force: bool = False) -> str:
    """Return `ALTER TABLE ... ENABLE` (or `FORCE`) `ROW LEVEL SECURITY`."""
    template = SQL_FORCE_RLS if force else SQL_ENABLE_RLS
    return template.format(table=_qualified(target_schema, table))


def render_drop_index(name: str, target_schema: str, *, concurrently: bool) -> str:
    """Return `DROP INDEX [CONCURRENTLY] IF EXISTS` of one index."""
    return SQL_DROP_INDEX.format(
        concurrently="CONCURRENTLY " if concurrently else "", name=_qualified(target_schema, name)
    )


def render_drop_table(table: str, target_schema: str) -> str:
    """Return `DROP TABLE IF EXISTS` of one table (without CASCADE: references stop it)."""
    return SQL_DROP_TABLE.format(table=_qualified(target_schema, table))


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
