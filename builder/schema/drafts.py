"""Drafts of a schema while it is normalized, and the checks that span tables.

`normalize` reads caller JSON into these mutable drafts (a name or type that failed validation
is None), then runs the checks here, which need the whole schema: duplicate table names,
references between tables, the one relation namespace per PostgreSQL schema, indexes that repeat
another of their table, and the names the caller wants dropped that the schema itself defines.
Only a schema without issues is frozen into `spec` dataclasses with `build_table`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from builder.request.fields import IssueLog, shown
from builder.schema import names
from builder.schema.spec import Column, ForeignKey, Index, Table
from builder.schema.sqltypes import SqlType


@dataclass
class ColumnDraft:
    """A column: `label` is the caller's original name, `path` where it came from."""

    name: str
    label: str
    path: str
    type: SqlType | None
    not_null: bool = False
    default: str | None = None
    unique: bool = False
    primary_key: bool = False
    references: ReferenceDraft | None = None


@dataclass
class ReferenceDraft:
    """A `references` object; `table`/`column` are None when their names were invalid."""

    table: str | None
    column: str | None
    on_delete: str
    path: str


@dataclass
class IndexDraft:
    """An index; `name` is None until a generated name is assigned."""

    name: str | None
    columns: tuple[str, ...]
    unique: bool
    path: str


@dataclass(frozen=True)
class DropDraft:
    """One valid name of a `drop_*` list: `label` as the caller wrote it, `path` of the entry."""

    name: str
    label: str
    path: str

    def described(self, what: str) -> str:
        """Return e.g. `column 'old_code'`, adding the caller's spelling when it differs."""
        written = f" (written {shown(self.label)})" if self.label != self.name else ""
        return f"{what} {self.name!r}{written}"


@dataclass
class TableDraft:
    """A table; `name` is None when the caller's name was invalid."""

    name: str | None
    label: str
    path: str
    tenant_scoped: bool
    columns: list[ColumnDraft] = field(default_factory=list)
    indexes: list[IndexDraft] = field(default_factory=list)
    drop_columns: list[DropDraft] = field(default_factory=list)
    drop_indexes: list[DropDraft] = field(default_factory=list)
    # The caller's index list was longer than the contract allows, and only its start was read.
    indexes_cut: bool = False

    def column(self, name: str) -> ColumnDraft | None:
        """Return the column called `name`, or None."""
        return next((c for c in self.columns if c.name == name), None)


def unique_tables(tables: list[TableDraft], log: IssueLog) -> list[TableDraft]:
    """Return the tables with usable names, logging `duplicate_name` for later duplicates."""
    first: dict[str, TableDraft] = {}
    for table in tables:
        if table.name is None:
            continue
        earlier = first.setdefault(table.name, table)
        if earlier is not table:
            log.add(
                f"{table.path}.name",
                "duplicate_name",
                f"table {shown(table.label)} becomes {table.name!r}, the name of the earlier "
                f"table {shown(earlier.label)}",
            )
    return list(first.values())


def check_dropped_tables(
    drop_tables: list[DropDraft], tables: list[TableDraft], log: IssueLog
) -> None:
    """Log `conflicting_value` for every table in `drop_tables` that `tables` defines."""
    by_name = {t.name: t for t in tables}
    for drop in drop_tables:
        table = by_name.get(drop.name)
        if table is not None:
            log.add(
                drop.path,
                "conflicting_value",
                f"{drop.described('table')} is defined by this payload ({table.path}); a table "
                "cannot be both defined and dropped",
            )


def check_references(
    sources: list[TableDraft],
    tables: list[TableDraft],
    log: IssueLog,
    *,
    dropped: frozenset[str] = frozenset(),
) -> None:
    """Check that every `references` in `sources` points at a unique column of `tables`.

    `sources` are all tables read (even those whose own name is invalid or a duplicate);
    `tables` are the ones that can be referenced. A reference to a table that the payload does
    not define is accepted, since that table may exist in the target database (the planner
    checks it against the target's catalog), unless the payload drops it (`dropped`); only the
    rules of the referencing column itself are checked for it here.
    """
    by_name = {t.name: t for t in tables}
    for table in sources:
        for column in table.columns:
            ref = column.references
            if ref is None or ref.table is None or ref.column is None:
                continue
            target = by_name.get(ref.table)
            if target is not None:
                _check_referenced_column(column, ref, target, log)
            elif ref.table in dropped:
                log.add(
                    f"{ref.path}.table",
                    "conflicting_value",
                    f"table {ref.table!r} is in drop_tables: a column cannot reference a table "
                    "that is dropped",
                )
            if ref.on_delete == "SET NULL" and column.not_null:
                message = "on_delete SET NULL needs a column that allows NULL (not_null is set)"
                log.add(f"{ref.path}.on_delete", "invalid_value", message)
            if target is None:
                continue
            if target.tenant_scoped and not table.tenant_scoped:
                log.add(
                    f"{ref.path}.table",
                    "cross_tenant_reference",
                    f"a table that is not tenant-scoped cannot reference the tenant-scoped table "
                    f"{target.name!r}: its rows would point into one tenant's rows, which the "
                    "database cannot keep apart (make both tables tenant-scoped, or both global)",
                )


def _check_referenced_column(
    column: ColumnDraft, ref: ReferenceDraft, target: TableDraft, log: IssueLog
) -> None:
    """Check the column that `ref` points at, and that `column` can reference it."""
    assert ref.column is not None
    referenced = target.column(ref.column)
    where = f"{ref.path}.column"
    if referenced is None:
        log.add(where, "unknown_reference", f"table {target.name!r} has no column {ref.column!r}")
        return
    if not (referenced.primary_key or referenced.unique or _has_unique_index(target, ref.column)):
        log.add(
            where,
            "invalid_value",
            f"{target.name}.{ref.column} is neither the primary key nor unique, so it cannot be "
            "referenced (add unique: true or a unique index on it)",
        )
    if column.type is not None and referenced.type is not None and column.type != referenced.type:
        log.add(
            ref.path,
            "invalid_value",
            f"column type {column.type.canonical} does not match the type "
            f"{referenced.type.canonical} of {target.name}.{ref.column}",
        )


def _has_unique_index(table: TableDraft, column: str) -> bool:
    return any(index.unique and index.columns == (column,) for index in table.indexes)


def assign_relation_names(tables: list[TableDraft], log: IssueLog) -> dict[str, str]:
    """Check that relation names do not collide; give generated indexes free names.

    Names the caller chose (tables, named indexes) and constraint index names are claimed first
    and a collision among them is an issue; generated index names are then picked around them.
    Return every relation name of the schema, with what holds it (for messages).
    """
    taken: dict[str, str] = {}
    for table in tables:
        assert table.name is not None
        _claim(taken, table.name, f"table {table.name!r}", f"{table.path}.name", log)
    for owner, name, path in _constraint_indexes(tables):
        _claim(taken, name, owner, path, log)
    for table in tables:
        for index in table.indexes:
            if index.name is not None:
                owner = f"index {index.name!r} of table {table.name!r}"
                _claim(taken, index.name, owner, f"{index.path}.name", log)
    for table in tables:
        assert table.name is not None
        for index in table.indexes:
            if index.name is None:
                index.name = free_index_name(table.name, index.columns, taken)
                taken[index.name] = f"the generated index {index.name!r} of table {table.name!r}"
    return taken


def check_dropped_indexes(tables: list[TableDraft], taken: dict[str, str], log: IssueLog) -> None:
    """Check the `drop_indexes` of `tables` against the relation names of the schema (`taken`).

    Indexes share one namespace per PostgreSQL schema with tables and constraint indexes, so
    dropping a name that the schema defines (for this table or another) would drop, or clash
    with, what the schema asks for: `conflicting_value`. An index dropped by two tables is a
    `duplicate_name`.
    """
    dropped: dict[str, DropDraft] = {}
    for table in tables:
        for drop in table.drop_indexes:
            holder = taken.get(drop.name)
            if holder is not None:
                log.add(
                    drop.path,
                    "conflicting_value",
                    f"{drop.described('index')} is the name of {holder} in this payload; a name "
                    "cannot be both defined and dropped",
                )
                continue
            earlier = dropped.setdefault(drop.name, drop)
            if earlier is not drop:
                log.add(
                    drop.path,
                    "duplicate_name",
                    f"index {drop.name!r} is already dropped at {earlier.path} (index names are "
                    "unique per PostgreSQL schema)",
                )


def check_duplicate_indexes(tables: list[TableDraft], log: IssueLog) -> None:
    """Log `duplicate_index` for an index of a table that has the key of an earlier one.

    Two indexes with the same key columns, as built (a unique index of a tenant-scoped table
    leads with `tenant_id`), and the same uniqueness are one index twice, whatever their names:
    every write updates both, and the apply creates and locks both. The primary key, the
    `(tenant_id, id)` key and each unique column's constraint come first. One issue per repeated
    key, at the path of its first repeat, naming the index it repeats. A list cut at the
    contract's maximum is not compared: its `too_many` is the issue that matters.
    """
    for table in tables:
        if table.indexes_cut:
            continue
        first = dict(_constraint_keys(table))
        repeats: dict[tuple[bool, tuple[str, ...]], list[IndexDraft]] = {}
        for index in table.indexes:
            key = (index.unique, _key_columns(table, index.columns, index.unique))
            if key in first:
                repeats.setdefault(key, []).append(index)
            else:
                first[key] = f"the index {index.name!r} ({index.path})"
        for key, (index, *more) in repeats.items():
            times = f"{len(more)} more time{'s' if len(more) > 1 else ''}"
            also = f" (repeated {times} in this table)" if more else ""
            log.add(
                index.path,
                "duplicate_index",
                f"index {index.name!r} of table {table.name!r} is the same as {first[key]}: "
                f"{'unique, ' if key[0] else ''}on ({', '.join(key[1])}){also}",
            )


def _constraint_keys(table: TableDraft) -> Iterable[tuple[tuple[bool, tuple[str, ...]], str]]:
    """Yield the key, and a description, of the index behind each PK and UNIQUE constraint."""
    assert table.name is not None
    primary = tuple(c.name for c in table.columns if c.primary_key)
    if primary:
        yield (True, primary), f"the primary key {names.primary_key_name(table.name)!r}"
        if table.tenant_scoped:
            name = names.tenant_key_name(table.name)
            yield (True, _key_columns(table, primary, True)), f"the unique constraint {name!r}"
    for column in table.columns:
        if column.unique and not column.primary_key:
            name = names.unique_constraint_name(table.name, column.name)
            key = _key_columns(table, (column.name,), True)
            yield (True, key), f"the unique constraint {name!r} ({column.path}.unique)"


def _key_columns(table: TableDraft, columns: tuple[str, ...], unique: bool) -> tuple[str, ...]:
    """The key columns of an index as `builder.sql.render` builds it.

    A uniqueness in a tenant-scoped table leads with `tenant_id`, as `render.unique_columns`
    makes it (this stage comes before SQL and does not import it).
    """
    if not (unique and table.tenant_scoped):
        return columns
    return ("tenant_id", *(c for c in columns if c != "tenant_id"))


def _constraint_indexes(tables: Iterable[TableDraft]) -> Iterable[tuple[str, str, str]]:
    """Yield (owner, name, path) for the index behind every PK and UNIQUE constraint."""
    for table in tables:
        assert table.name is not None
        owner = f"the primary key index of table {table.name!r}"
        yield owner, names.primary_key_name(table.name), f"{table.path}.name"
        if table.tenant_scoped:
            owner = f"the (tenant_id, id) unique index of table {table.name!r}"
            yield owner, names.tenant_key_name(table.name), f"{table.path}.name"
        for column in table.columns:
            if column.unique and not column.primary_key:
                owner = f"the unique constraint on {table.name}.{column.name}"
                name = names.unique_constraint_name(table.name, column.name)
                yield owner, name, f"{column.path}.unique"


def _claim(taken: dict[str, str], name: str, owner: str, path: str, log: IssueLog) -> None:
    """Claim `name` for `owner`, or log `duplicate_name` if it is already taken."""
    holder = taken.get(name)
    if holder is None:
        taken[name] = owner
    else:
        log.add(
            path,
            "duplicate_name",
            f"{owner} would be named {name!r}, which is already used by {holder} (tables, "
            "indexes and constraint indexes share one namespace)",
        )


def free_index_name(table: str, columns: tuple[str, ...], taken: dict[str, str]) -> str:
    """Return `names.index_name(table, columns)`, or a hash-suffixed variant if that is taken.

    The suffix is a hash of the table and the exact column list (`["a_b"]` and `["a", "b"]`
    hash differently) plus an attempt counter, so the result is deterministic for a schema.
    """
    base = names.index_name(table, columns)
    attempt = 0
    candidate = base
    while candidate in taken:
        attempt += 1
        key = "\x00".join((table, *columns, str(attempt)))
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        candidate = f"{base[: names.MAX_IDENTIFIER_BYTES - 9]}_{digest}"
    return candidate


def build_table(table: TableDraft) -> Table:
    """Freeze a checked draft into a `Table`."""
    assert table.name is not None
    return Table(
        name=table.name,
        columns=tuple(_build_column(c) for c in table.columns),
        indexes=tuple(Index(i.name or "", i.columns, i.unique) for i in table.indexes),
        tenant_scoped=table.tenant_scoped,
        drop_columns=tuple(d.name for d in table.drop_columns),
        drop_indexes=tuple(d.name for d in table.drop_indexes),
    )


def _build_column(column: ColumnDraft) -> Column:
    """Freeze a checked column draft into a `Column`."""
    assert column.type is not None
    ref = column.references
    return _column(
        column.name,
        column.type.canonical,
        column.not_null,
        column.default,
        column.unique,
        column.primary_key,
        None if ref is None else ForeignKey(ref.table or "", ref.column or "id", ref.on_delete),
    )


# Most columns repeat unchanged in table after table (`id`, `tenant_id`, `created_at`, ...), and
# a frozen `Column` is slow to build: equal columns share one instance. The arguments are the
# fields of `Column`, in order (positional: a cheaper cache key than keywords).
@functools.lru_cache(maxsize=4096)
def _column(
    name: str,
    sql_type: str,
    not_null: bool,
    default: str | None,
    unique: bool,
    primary_key: bool,
    references: ForeignKey | None,
) -> Column:
    return Column(name, sql_type, not_null, default, unique, primary_key, references)
