"""Validate caller JSON and normalize it into a `Schema`; hash the result canonically.

`normalize_schema` reports every problem of a payload at once (`SchemaValidationError` with one
`ValidationIssue` per problem) and otherwise returns a `Schema` in which every name is a valid
snake_case identifier and every type and default is canonical SQL built from an allow list.

It also adds the default columns (`id`, `tenant_id`, `created_at`, `updated_at`, `deleted_at`)
and indexes (on `tenant_id` and `created_at`), and names every relation so that no two collide:
tables, indexes and the indexes behind primary key and unique constraints share one namespace
per PostgreSQL schema. Names the caller chose are kept and a collision among them is reported;
a generated index name that would collide gets a hash suffix instead (see `free_index_name`).

The payload may also name tables (`drop_tables`), and a table columns and indexes (`drop_columns`,
`drop_indexes`), that the caller wants removed from the target database. They are names only,
normalized and checked like the others, and refused when the payload itself defines them; whether
they exist is for the planner to find out from the target's catalog. `allow_destructive` is the
caller's consent to such changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

from builder.errors import SchemaValidationError
from builder.request.fields import (
    IssueLog,
    as_object,
    check_keys,
    json_type,
    key_path,
    present,
    read_bool,
    read_list,
    read_name,
    read_string,
    shown,
    to_identifier,
)
from builder.schema.drafts import (
    ColumnDraft,
    DropDraft,
    IndexDraft,
    ReferenceDraft,
    TableDraft,
    assign_relation_names,
    build_table,
    check_dropped_indexes,
    check_dropped_tables,
    check_duplicate_indexes,
    check_references,
    unique_tables,
)
from builder.schema.spec import ON_DELETE_ACTIONS, Schema
from builder.schema.sqltypes import (
    IncompatibleDefaultError,
    SqlType,
    column_default,
    is_utf8,
    parse_type,
)

MAX_TABLES = 1000
MAX_COLUMNS = 1600  # PostgreSQL's limit, default columns included
MAX_INDEXES = 100
MAX_INDEX_COLUMNS = 32  # PostgreSQL's INDEX_MAX_KEYS
MAX_VERSION_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 1000

PAYLOAD_KEYS = (
    "schema_version",
    "description",
    "tables",
    "drop_tables",
    "allow_destructive",
    "force_apply",
    "dry_run",
)
TABLE_KEYS = ("name", "columns", "indexes", "tenant_scoped", "drop_columns", "drop_indexes")
COLUMN_KEYS = ("name", "type", "not_null", "unique", "default", "references")
REFERENCE_KEYS = ("table", "column", "on_delete")
INDEX_KEYS = ("name", "columns", "unique")

_DEFAULT_TYPES = (str, int, float)  # JSON strings, numbers and booleans (bool is an int)
_UUID = SqlType("UUID")
_TIMESTAMPTZ = SqlType("TIMESTAMPTZ")


def normalize_schema(payload: object, *, path: str = "payload") -> Schema:
    """Validate `payload` and return the normalized `Schema`.

    Raise `SchemaValidationError` with every issue found when anything is wrong.
    """
    log = IssueLog()
    obj = as_object(payload, path, log, "the payload")
    if obj is None:
        raise SchemaValidationError(log.items)
    check_keys(obj, PAYLOAD_KEYS, path, log)
    version = _read_version(obj, path, log)
    description = _read_description(obj, path, log)
    for flag in ("force_apply", "dry_run"):
        read_bool(obj, flag, path, log, default=False)
    raw_tables = read_list(
        obj, "tables", path, log, required=True, limit=MAX_TABLES, non_empty=True
    )
    drafts = [_read_table(raw, f"{path}.tables[{i}]", log) for i, raw in enumerate(raw_tables)]
    drop_tables = _read_drops(obj, "drop_tables", path, log, what="table", limit=MAX_TABLES)
    allow_destructive = read_bool(obj, "allow_destructive", path, log, default=False)
    read = [t for t in drafts if t is not None]
    tables = unique_tables(read, log)
    check_dropped_tables(drop_tables, tables, log)
    check_references(read, tables, log, dropped=frozenset(d.name for d in drop_tables))
    taken = assign_relation_names(tables, log)
    check_duplicate_indexes(tables, log)
    check_dropped_indexes(tables, taken, log)
    if log or version is None or description is None:
        raise SchemaValidationError(log.items)
    return Schema(
        version,
        description,
        tuple(build_table(t) for t in tables),
        drop_tables=tuple(d.name for d in drop_tables),
        allow_destructive=allow_destructive,
    )


def canonical_json(schema: Schema) -> str:
    """Return the canonical JSON text of `schema` (sorted keys, no spaces)."""
    return schema.canonical_json


def schema_hash(schema: Schema) -> str:
    """Return the SHA-256 hex digest of the canonical JSON of `schema`."""
    return hashlib.sha256(canonical_json(schema).encode()).hexdigest()


# --- payload fields ----------------------------------------------------------------------------


def _read_version(obj: Mapping[object, object], path: str, log: IssueLog) -> str | None:
    """Return `schema_version` if it is 1..64 characters of `[0-9A-Za-z._-]`."""
    version = read_string(obj, "schema_version", path, log, required=True)
    where = key_path(path, "schema_version")
    if version is None:
        return None
    if not version:
        log.add(where, "empty", "schema_version must not be empty")
    elif len(version) > MAX_VERSION_LENGTH:
        message = f"schema_version is longer than {MAX_VERSION_LENGTH} characters"
        log.add(where, "too_long", message)
    elif not all(c.isascii() and (c.isalnum() or c in "._-") for c in version):
        log.add(where, "invalid_value", "schema_version may only contain A-Z a-z 0-9 . _ -")
    else:
        return version
    return None


def _read_description(obj: Mapping[object, object], path: str, log: IssueLog) -> str | None:
    """Return the stripped `description` if it is non-empty, short enough and has no NUL."""
    description = read_string(obj, "description", path, log, required=True)
    where = key_path(path, "description")
    if description is None:
        return None
    description = description.strip()
    if not description:
        log.add(where, "empty", "description must not be empty")
    elif len(description) > MAX_DESCRIPTION_LENGTH:
        message = f"description is longer than {MAX_DESCRIPTION_LENGTH} characters"
        log.add(where, "too_long", message)
    elif "\x00" in description or not is_utf8(description):
        message = "description must not contain NUL characters or lone surrogates"
        log.add(where, "invalid_value", message)
    else:
        return description
    return None


# --- tables, columns, indexes ------------------------------------------------------------------


def _read_table(raw: object, path: str, log: IssueLog) -> TableDraft | None:
    """Read one table with its default columns and indexes added."""
    obj = as_object(raw, path, log, "a table")
    if obj is None:
        return None
    check_keys(obj, TABLE_KEYS, path, log)
    named = read_name(obj, "name", path, log, what="table")
    table = TableDraft(
        name=named[1] if named else None,
        label=named[0] if named else "",
        path=path,
        tenant_scoped=read_bool(obj, "tenant_scoped", path, log, default=True),
    )
    raw_columns = read_list(obj, "columns", path, log, required=True, limit=MAX_COLUMNS)
    columns = [_read_column(c, f"{path}.columns[{j}]", log) for j, c in enumerate(raw_columns)]
    table.columns = _with_default_columns(table, [c for c in columns if c is not None], log)
    if len(table.columns) > MAX_COLUMNS and _length(obj.get("columns")) <= MAX_COLUMNS:
        log.add(f"{path}.columns", "too_many", f"a table has at most {MAX_COLUMNS} columns")
    raw_indexes = read_list(obj, "indexes", path, log, required=False, limit=MAX_INDEXES)
    table.indexes_cut = _length(obj.get("indexes")) > MAX_INDEXES
    indexes = [_read_index(x, f"{path}.indexes[{k}]", log) for k, x in enumerate(raw_indexes)]
    table.indexes = _check_index_columns(table, [x for x in indexes if x is not None], log)
    table.indexes = _default_indexes(table) + table.indexes
    table.drop_columns = _read_drops(
        obj, "drop_columns", path, log, what="column", limit=MAX_COLUMNS
    )
    _check_dropped_columns(table, log)
    # Checked against every relation name of the schema once they are known (drafts).
    table.drop_indexes = _read_drops(
        obj, "drop_indexes", path, log, what="index", limit=MAX_INDEXES
    )
    return table


def _length(value: object) -> int:
    """Return the length of a JSON array, or 0 for anything else."""
    return len(value) if isinstance(value, list | tuple) else 0


def _read_column(raw: object, path: str, log: IssueLog) -> ColumnDraft | None:
    """Read one caller column; return None if it has no usable name."""
    obj = as_object(raw, path, log, "a column")
    if obj is None:
        return None
    check_keys(obj, COLUMN_KEYS, path, log)
    named = read_name(obj, "name", path, log, what="column")
    type_text = read_string(obj, "type", path, log, required=True)
    sql_type = None
    if type_text is not None:
        try:
            sql_type = parse_type(type_text)
        except ValueError as exc:
            log.add(f"{path}.type", "not_allowed", str(exc))
    unique = read_bool(obj, "unique", path, log, default=False)
    if unique and sql_type is not None and not sql_type.indexable:
        log.add(f"{path}.unique", "invalid_value", _not_indexable(sql_type, "be unique"))
    column = ColumnDraft(
        name=named[1] if named else "",
        label=named[0] if named else "",
        path=path,
        type=sql_type,
        not_null=read_bool(obj, "not_null", path, log, default=False),
        unique=unique,
        default=_read_default(obj, path, sql_type, log),
        references=_read_reference(obj, path, log),
    )
    return column if named else None


def _read_default(
    obj: Mapping[object, object], path: str, sql_type: SqlType | None, log: IssueLog
) -> str | None:
    """Return the canonical default of a column (checked against its type when it is known)."""
    raw = obj.get("default")
    if raw is None:
        return None
    if not isinstance(raw, _DEFAULT_TYPES):
        message = f"default must be a string, number, boolean or null, not {json_type(raw)}"
        log.add(f"{path}.default", "invalid_type", message)
        return None
    try:
        return column_default(raw, sql_type)
    except IncompatibleDefaultError as exc:
        log.add(f"{path}.default", "invalid_value", str(exc))
    except ValueError as exc:
        log.add(f"{path}.default", "not_allowed", str(exc))
    return None


def _read_reference(
    obj: Mapping[object, object], path: str, log: IssueLog
) -> ReferenceDraft | None:
    """Read the optional `references` of a column."""
    if not present(obj, "references"):
        return None
    path = f"{path}.references"
    ref = as_object(obj["references"], path, log, "references")
    if ref is None:
        return None
    check_keys(ref, REFERENCE_KEYS, path, log)
    table = read_name(ref, "table", path, log, what="referenced table")
    column = read_name(ref, "column", path, log, what="referenced column", required=False)
    on_delete = "NO ACTION"
    action = read_string(ref, "on_delete", path, log, required=False)
    if action is not None:
        # `set null`, `SET NULL` and `set_null` all name the same action.
        words = " ".join(action.replace("_", " ").split()).upper() if action.isascii() else action
        if words in ON_DELETE_ACTIONS:
            on_delete = words
        else:
            allowed = ", ".join(a.lower() for a in ON_DELETE_ACTIONS)
            log.add(f"{path}.on_delete", "invalid_value", f"on_delete must be one of: {allowed}")
    column_name = column[1] if column else (None if present(ref, "column") else "id")
    return ReferenceDraft(table[1] if table else None, column_name, on_delete, path)


def _read_index(raw: object, path: str, log: IssueLog) -> tuple[IndexDraft, bool] | None:
    """Read one caller index and say whether it is valid so far.

    Its columns are checked against the table later; a column that is not a valid name is
    left as "" so that the positions of the others stay right.
    """
    obj = as_object(raw, path, log, "an index")
    if obj is None:
        return None
    check_keys(obj, INDEX_KEYS, path, log)
    named = read_name(obj, "name", path, log, what="index", required=False)
    raw_columns = read_list(
        obj, "columns", path, log, required=True, limit=MAX_INDEX_COLUMNS, non_empty=True
    )
    columns: list[str] = []
    ok = bool(raw_columns) and (named is not None or not present(obj, "name"))
    for m, item in enumerate(raw_columns):
        name = _index_column(item, f"{path}.columns[{m}]", columns, log)
        ok = ok and name is not None
        columns.append(name or "")
    unique = read_bool(obj, "unique", path, log, default=False)
    return IndexDraft(named[1] if named else None, tuple(columns), unique, path), ok


def _index_column(item: object, path: str, earlier: list[str], log: IssueLog) -> str | None:
    """Return the snake_case name of one index column, or None (with issues logged)."""
    if not isinstance(item, str):
        log.add(path, "invalid_type", f"an index column must be a string, not {json_type(item)}")
        return None
    name = to_identifier(item, path, log, "column")
    if name is not None and name in earlier:
        log.add(path, "duplicate_name", f"column {shown(item)} appears twice in the index")
        return None
    return name


# --- names to drop ------------------------------------------------------------------------------


def _read_drops(
    obj: Mapping[object, object], key: str, path: str, log: IssueLog, *, what: str, limit: int
) -> list[DropDraft]:
    """Read the optional array `key` of names of a `what` to drop, keeping the caller's order.

    An entry that is not a string, is not a usable name, or becomes the name of an earlier entry
    is logged and left out.
    """
    where = key_path(path, key)
    drops: list[DropDraft] = []
    seen: dict[str, DropDraft] = {}
    for i, item in enumerate(read_list(obj, key, path, log, required=False, limit=limit)):
        entry = f"{where}[{i}]"
        if not isinstance(item, str):
            message = f"a {what} name in {key} must be a string, not {json_type(item)}"
            log.add(entry, "invalid_type", message)
            continue
        name = to_identifier(item, entry, log, what)
        if name is None:
            continue
        earlier = seen.setdefault(name, DropDraft(name, item, entry))
        if earlier.path != entry:
            log.add(
                entry,
                "duplicate_name",
                f"{what} {shown(item)} becomes {name!r}, the name of the earlier entry "
                f"{shown(earlier.label)}",
            )
            continue
        drops.append(earlier)
    return drops


def _check_dropped_columns(table: TableDraft, log: IssueLog) -> None:
    """Log `conflicting_value` for every column in `drop_columns` that `table` defines."""
    automatic = {c.name for c in _default_columns(table)}
    for drop in table.drop_columns:
        column = table.column(drop.name)
        if column is None:
            continue
        if drop.name in automatic:
            defined = "one of the automatic columns of this table"
        else:
            defined = f"a column that this table defines ({column.path})"
        log.add(
            drop.path,
            "conflicting_value",
            f"{drop.described('column')} is {defined}; a column cannot be both defined and dropped",
        )


# --- default columns and indexes ---------------------------------------------------------------


def _default_columns(table: TableDraft) -> list[ColumnDraft]:
    """Return the default columns of `table`, in order."""
    path = f"{table.path}.columns"
    columns = [
        ColumnDraft("id", "id", path, _UUID, True, "gen_random_uuid()", primary_key=True),
        ColumnDraft("created_at", "created_at", path, _TIMESTAMPTZ, True, "now()"),
        ColumnDraft("updated_at", "updated_at", path, _TIMESTAMPTZ, True, "now()"),
        ColumnDraft("deleted_at", "deleted_at", path, _TIMESTAMPTZ),
    ]
    if table.tenant_scoped:
        columns.insert(1, ColumnDraft("tenant_id", "tenant_id", path, _UUID, True))
    return columns


def _with_default_columns(
    table: TableDraft, caller: list[ColumnDraft], log: IssueLog
) -> list[ColumnDraft]:
    """Return the default columns (or the caller's versions of them), then the caller's others."""
    by_name: dict[str, ColumnDraft] = {}
    for column in caller:
        first = by_name.setdefault(column.name, column)
        if first is not column:
            log.add(
                f"{column.path}.name",
                "duplicate_name",
                f"column {shown(column.label)} becomes {column.name!r}, the name of the earlier "
                f"column {shown(first.label)}",
            )
    defaults = _default_columns(table)
    result = [_override(d, by_name[d.name], log) if d.name in by_name else d for d in defaults]
    default_names = {d.name for d in defaults}
    result += [c for c in by_name.values() if c.name not in default_names]
    return result


def _override(default: ColumnDraft, column: ColumnDraft, log: IssueLog) -> ColumnDraft:
    """Return the caller's version of a default column, with what the builder relies on enforced."""
    if default.primary_key:
        if column.type is not None and not column.type.indexable:
            message = _not_indexable(column.type, "be the primary key")
            log.add(f"{column.path}.type", "invalid_value", message)
        # The primary key is NOT NULL and unique by itself; no separate UNIQUE constraint.
        return replace(column, primary_key=True, not_null=True, unique=False)
    if default.name == "tenant_id":
        if column.type is not None and column.type != _UUID:
            log.add(
                f"{column.path}.type",
                "invalid_value",
                "tenant_id of a tenant-scoped table must be UUID (row level security compares it "
                "with the current tenant's UUID)",
            )
        return replace(column, not_null=True)
    return column


def _check_index_columns(
    table: TableDraft, indexes: list[tuple[IndexDraft, bool]], log: IssueLog
) -> list[IndexDraft]:
    """Log index columns not in `table` or of a type that cannot be indexed; return the valid
    indexes."""
    known = {c.name: c.type for c in table.columns}
    where = f"table {table.name!r}" if table.name else "this table"
    kept: list[IndexDraft] = []
    for index, valid in indexes:
        missing = [m for m, name in enumerate(index.columns) if name and name not in known]
        for m in missing:
            message = f"{where} has no column {index.columns[m]!r}"
            log.add(f"{index.path}.columns[{m}]", "unknown_reference", message)
        unindexable = [
            (m, sql_type)
            for m, name in enumerate(index.columns)
            if (sql_type := known.get(name)) is not None and not sql_type.indexable
        ]
        for m, sql_type in unindexable:
            message = _not_indexable(sql_type, "be indexed")
            log.add(f"{index.path}.columns[{m}]", "invalid_value", message)
        if valid and not missing and not unindexable:
            kept.append(index)
    return kept


def _not_indexable(sql_type: SqlType, what: str) -> str:
    return (
        f"a {sql_type.canonical} column cannot {what}: PostgreSQL has no equality operator for "
        "json; use JSONB"
    )


def _default_indexes(table: TableDraft) -> list[IndexDraft]:
    """Return the default indexes that the caller's indexes do not already cover."""
    wanted = [("tenant_id",)] if table.tenant_scoped else []
    wanted.append(("created_at",))
    covered = {index.columns for index in table.indexes}
    path = f"{table.path}.indexes"
    return [IndexDraft(None, columns, False, path) for columns in wanted if columns not in covered]
