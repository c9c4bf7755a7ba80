"""Plan a schema version against the live catalog: the desired tables minus what exists.

A payload describes the desired state of the tables it lists. `make_plan` compares each of
them with the target's catalog (`builder.db.introspect.Catalog`) and returns the ordered
operations that bring the database there: create a missing table (the same SQL a first apply
runs), add a column, change a type, a default or a nullability, add an index, a unique or a
foreign key constraint, enable and force row level security, create the tenant policy, add the
`updated_at` trigger, and the drops the payload asks for by name. Nothing else is ever dropped:
what the database holds beyond the payload is reported in the plan's `notes`.

Each operation says how risky it is (`builder.evolve.risk`), and where it runs: inside the
apply's transaction, or after its COMMIT, one statement at a time (`CREATE INDEX CONCURRENTLY`
on a table that holds rows, `VALIDATE CONSTRAINT`), with the statements that clean up after a
failure there. The planner is pure: the same schema and catalog give the same plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from builder.db.introspect import Catalog, LiveForeignKey, LiveTable
from builder.evolve.compare import (
    VOLATILE_DEFAULTS,
    binary_compatible_change,
    catalog_type,
    same_default,
)
from builder.evolve.risk import Risk, Rule
from builder.schema import names
from builder.schema.spec import Column, ForeignKey, Index, Schema, Table
from builder.sql import render
from builder.sql.check import check_statements
from builder.sql.render import (
    TENANT_COLUMN,
    TENANT_SETTING,
    UPDATED_AT_COLUMN,
    Migration,
    index_columns,
    quote_name,
    quote_names,
    render_alter,
    unique_columns,
)

AFTER_COMMIT_HEADER = (
    "-- After COMMIT, outside the transaction, one statement at a time "
    "(a failure there is cleaned up and recorded):"
)


@dataclass(frozen=True)
class Operation:
    """One change to the database, with its SQL, its risk and where it runs."""

    action: str
    table: str
    subject: str
    description: str
    risk: Risk = Risk.SAFE
    rule: str | None = None
    reason: str = ""
    statements: tuple[str, ...] = ()
    after_commit: tuple[str, ...] = ()
    cleanup: tuple[str, ...] = ()
    blocker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form shown in answers, previews and the ledger."""
        out: dict[str, Any] = {
            "action": self.action,
            "table": self.table,
            "subject": self.subject,
            "description": self.description,
            "risk": str(self.risk),
            "rule": self.rule,
            "reason": self.reason,
            "sql": list(self.statements),
            "after_commit": list(self.after_commit),
        }
        if self.blocker is not None:
            out["blocker"] = self.blocker
        return out


@dataclass(frozen=True)
class Plan:
    """The ordered operations that bring the catalog to `schema`, and what was left alone."""

    schema: Schema
    target_schema: str
    operations: tuple[Operation, ...] = ()
    notes: tuple[str, ...] = ()
    existing_tables: tuple[str, ...] = ()
    occupied_tables: frozenset[str] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        return not self.operations

    @cached_property
    def risk(self) -> Risk:
        """The highest risk of any operation (`safe` for an empty plan)."""
        return max((op.risk for op in self.operations), key=lambda r: r.rank, default=Risk.SAFE)

    @property
    def blockers(self) -> tuple[Operation, ...]:
        return tuple(op for op in self.operations if op.blocker is not None)

    @property
    def transaction_statements(self) -> tuple[str, ...]:
        return tuple(s for op in self.operations for s in op.statements)

    @property
    def after_commit_statements(self) -> tuple[str, ...]:
        return tuple(s for op in self.operations for s in op.after_commit)

    @property
    def transaction_script(self) -> str:
        """The statements run inside the apply's transaction, as one string."""
        return "".join(f"{s};\n" for s in self.transaction_statements)

    @cached_property
    def migration(self) -> Migration:
        """The plan as a script: the transaction's statements, then those run after COMMIT."""
        statements = [*self.transaction_statements, *self.after_commit_statements]
        script = render.render_script(self.schema, self.transaction_statements)
        if self.after_commit_statements:
            after = "\n\n".join(f"{s};" for s in self.after_commit_statements)
            script = f"{script}\n{AFTER_COMMIT_HEADER}\n\n{after}\n"
        checksum = hashlib.sha256(script.encode()).hexdigest()
        return Migration(statements=tuple(statements), script=script, checksum=checksum)

    def report(self) -> dict[str, Any]:
        """The risk report: the level, each operation's rule and reason, the blockers, notes."""
        return {
            "level": str(self.risk),
            "findings": [
                {
                    "risk": str(op.risk),
                    "rule": op.rule,
                    "table": op.table,
                    "subject": op.subject,
                    "reason": op.reason,
                }
                for op in self.operations
                if op.risk != Risk.SAFE or op.rule is not None
            ],
            "blockers": [
                {"table": op.table, "subject": op.subject, "rule": op.rule, "reason": op.blocker}
                for op in self.blockers
            ],
            "notes": list(self.notes),
        }


def catalog_names(schema: Schema) -> list[str]:
    """The tables a plan of `schema` reads: its own, those it references, those it drops."""
    referenced = {
        c.references.table for t in schema.tables for c in t.columns if c.references is not None
    }
    return sorted({*(t.name for t in schema.tables), *referenced, *schema.drop_tables})


def tables_needing_rows(schema: Schema, catalog: Catalog) -> list[str]:
    """The existing tables whose plan depends on whether they hold rows (those it changes)."""
    assumed = make_plan(schema, catalog, occupied=None, check=False)
    return sorted({op.table for op in assumed.operations if op.table in catalog.tables})


def make_plan(
    schema: Schema,
    catalog: Catalog,
    *,
    occupied: Iterable[str] | None = None,
    check: bool = True,
) -> Plan:
    """Plan `schema` against `catalog`.

    `occupied` names the existing tables that hold rows (None: assume every one does, the
    careful answer when it was not read). With `check`, every statement of the plan passes the
    parser check first (`builder.sql.check`; a failure is a builder bug).
    """
    planner = _Planner(schema, catalog, None if occupied is None else frozenset(occupied))
    plan = planner.plan()
    if check and plan.operations:
        check_statements(
            [*plan.transaction_statements, *plan.after_commit_statements], evolution=True
        )
        cleanup = [s for op in plan.operations for s in op.cleanup]
        if cleanup:
            check_statements(cleanup, evolution=True)
    return plan


class _Planner:
    def __init__(self, schema: Schema, catalog: Catalog, occupied: frozenset[str] | None):
        self.schema = schema
        self.catalog = catalog
        self.target = catalog.schema
        self.occupied = occupied
        self.ops: list[Operation] = []
        self.foreign_keys: list[Operation] = []
        self.drops: list[Operation] = []
        self.notes: list[str] = []

    def has_rows(self, table: str) -> bool:
        return self.occupied is None or table in self.occupied

    def plan(self) -> Plan:
        schema, catalog = self.schema, self.catalog
        needs_function = any(t.column(UPDATED_AT_COLUMN) is not None for t in schema.tables)
        if needs_function and names.UPDATED_AT_FUNCTION not in catalog.functions:
            self.ops.append(
                Operation(
                    action="create_function",
                    table="",
                    subject=names.UPDATED_AT_FUNCTION,
                    description=f"create the function {names.UPDATED_AT_FUNCTION}()",
                    statements=(render.render_updated_at_function(self.target),),
                )
            )
        existing = []
        for table in schema.tables:
            live = catalog.table(table.name)
            if live is None:
                self._create_table(table)
            else:
                existing.append(table.name)
                self._alter_table(table, live)
        for table in schema.tables:
            for column in table.columns:
                if column.references is not None:
                    self._foreign_key(table, column, column.references)
        for name in schema.drop_tables:
            self._drop_table(name)
        return Plan(
            schema=schema,
            target_schema=self.target,
            operations=tuple([*self.ops, *self.foreign_keys, *self.drops]),
            notes=tuple(self.notes),
            existing_tables=tuple(existing),
            occupied_tables=self.occupied if self.occupied is not None else frozenset(existing),
        )

    # --- a missing table: the statements of a first apply ------------------------------------

    def _create_table(self, table: Table) -> None:
        statements = [render.render_create_table(table, self.target)]
        statements.extend(render.render_indexes(table, self.target))
        if table.tenant_scoped:
            statements.extend(render.render_tenant_policy(table, self.target))
        if table.column(UPDATED_AT_COLUMN) is not None:
            statements.append(render.render_updated_at_trigger(table, self.target))
        self.ops.append(
            Operation(
                action="create_table",
                table=table.name,
                subject=table.name,
                description=f"create table {table.name!r} ({len(table.columns)} columns, "
                f"{len(table.indexes)} indexes)",
                statements=tuple(statements),
            )
        )

    # --- an existing table --------------------------------------------------------------------

    def _alter_table(self, table: Table, live: LiveTable) -> None:
        for column in table.columns:
            live_column = live.column(column.name)
            if live_column is None:
                self._add_column(table, live, column)
            else:
                self._change_column(table, live, column)
        self._keys(table, live)
        for index in table.indexes:
            self._index(table, live, index)
        if table.tenant_scoped:
            self._tenant_policy(table, live)
        if table.column(UPDATED_AT_COLUMN) is not None:
            self._trigger(table, live)
        self._leftovers(table, live)

    def _op(self, table: Table, action: str, subject: str, description: str, **kw: Any) -> None:
        self.ops.append(
            Operation(
                action=action, table=table.name, subject=subject, description=description, **kw
            )
        )

    def _add_column(self, table: Table, live: LiveTable, column: Column) -> None:
        what = f"add column {column.name!r} {column.type} to {table.name!r}"
        rows = self.has_rows(table.name)
        statement = render.render_add_column(table, column, self.target)
        if column.primary_key:
            self._op(
                table,
                "add_column",
                column.name,
                what,
                risk=Risk.REVIEW,
                rule=Rule.CHANGING_PRIMARY_KEY,
                reason="the table has a primary key already",
                blocker="Adding a primary key column to an existing table is not automatically "
                "applicable: change the primary key by hand, or create a new table.",
            )
            return
        if column.not_null and column.default is None and rows:
            self._op(
                table,
                "add_column",
                column.name,
                what,
                risk=Risk.REVIEW,
                rule=Rule.ADDING_REQUIRED_FIELD,
                reason=f"{table.name!r} holds rows, which would have no value for the new "
                "NOT NULL column",
                blocker=f"Adding the NOT NULL column {column.name!r} without a default to "
                f"{table.name!r}, which holds rows, would fail: give it a default, or add it "
                "nullable, fill it, and make it NOT NULL in a later version.",
            )
            return
        if column.default in VOLATILE_DEFAULTS and rows:
            self._op(
                table,
                "add_column",
                column.name,
                what,
                risk=Risk.REVIEW,
                rule=Rule.ADDING_FIELD_WITH_DEFAULT,
                reason=f"the default {column.default} is computed per row: PostgreSQL rewrites "
                f"{table.name!r} under an ACCESS EXCLUSIVE lock",
                statements=(statement,),
            )
        else:
            self._op(table, "add_column", column.name, what, statements=(statement,))
        if column.unique:
            self._add_unique(
                table,
                names.unique_constraint_name(table.name, column.name),
                unique_columns(table, [column.name]),
            )

    def _change_column(self, table: Table, live: LiveTable, column: Column) -> None:
        live_column = live.column(column.name)
        assert live_column is not None
        name = quote_name(column.name)
        rows = self.has_rows(table.name)
        wanted_type = catalog_type(column.type)
        if live_column.type != wanted_type:
            statement = render_alter(
                table.name, self.target, render.SQL_ALTER_TYPE, column=name, type=column.type
            )
            what = (
                f"change the type of {table.name}.{column.name} from {live_column.type} to "
                f"{column.type}"
            )
            if binary_compatible_change(live_column.type, column.type):
                self._op(
                    table,
                    "alter_column_type",
                    column.name,
                    what,
                    reason="a wider type of the same kind: PostgreSQL changes only the catalog",
                    statements=(statement,),
                )
            else:
                self._op(
                    table,
                    "alter_column_type",
                    column.name,
                    what,
                    risk=Risk.REVIEW,
                    rule=Rule.CHANGING_COLUMN_TYPE,
                    reason="PostgreSQL rewrites the table and its indexes under an ACCESS "
                    "EXCLUSIVE lock, and values that do not convert make it fail",
                    statements=(statement,),
                )
        if not same_default(column.default, live_column.default):
            if column.default is None:
                statement = render_alter(
                    table.name, self.target, render.SQL_DROP_DEFAULT, column=name
                )
                what = f"drop the default of {table.name}.{column.name}"
            else:
                statement = render_alter(
                    table.name,
                    self.target,
                    render.SQL_SET_DEFAULT,
                    column=name,
                    default=column.default,
                )
                what = f"set the default of {table.name}.{column.name} to {column.default}"
            self._op(
                table,
                "set_default",
                column.name,
                what,
                reason="changes only future inserts",
                statements=(statement,),
            )
        wanted_not_null = column.not_null or column.primary_key
        if wanted_not_null and not live_column.not_null:
            self._set_not_null(table, column, rows)
        elif live_column.not_null and not wanted_not_null:
            self._op(
                table,
                "drop_not_null",
                column.name,
                f"allow NULL in {table.name}.{column.name}",
                statements=(
                    render_alter(table.name, self.target, render.SQL_DROP_NOT_NULL, column=name),
                ),
            )

    def _set_not_null(self, table: Table, column: Column, rows: bool) -> None:
        name = quote_name(column.name)
        what = f"make {table.name}.{column.name} NOT NULL"
        set_not_null = render_alter(table.name, self.target, render.SQL_SET_NOT_NULL, column=name)
        if not rows:
            self._op(table, "set_not_null", column.name, what, statements=(set_not_null,))
            return
        check = quote_name(names.truncate_name(f"{table.name}_{column.name}_not_null"))
        drop_check = render_alter(table.name, self.target, render.SQL_DROP_CONSTRAINT, name=check)
        self._op(
            table,
            "set_not_null",
            column.name,
            what,
            risk=Risk.REVIEW,
            rule=Rule.ADDING_NOT_NULLABLE_FIELD,
            reason=f"{table.name!r} holds rows: a CHECK (... IS NOT NULL) NOT VALID is added "
            "first and validated after COMMIT without blocking writes, so SET NOT NULL does not "
            "scan the table; a NULL in the rows makes the validation fail and the column stays "
            "nullable",
            statements=(
                render_alter(
                    table.name, self.target, render.SQL_ADD_NOT_NULL_CHECK, name=check, column=name
                ),
            ),
            after_commit=(
                render_alter(table.name, self.target, render.SQL_VALIDATE_CONSTRAINT, name=check),
                set_not_null,
                drop_check,
            ),
            cleanup=(drop_check,),
        )

    def _keys(self, table: Table, live: LiveTable) -> None:
        """The primary key, the tenant key and the unique columns' constraints."""
        primary = [c.name for c in table.columns if c.primary_key]
        live_primary = next((i for i in live.indexes if i.primary), None)
        if primary and (live_primary is None or list(live_primary.columns) != primary):
            shown = "none" if live_primary is None else ", ".join(live_primary.columns)
            self._op(
                table,
                "primary_key",
                names.primary_key_name(table.name),
                f"primary key of {table.name!r} on ({', '.join(primary)})",
                risk=Risk.REVIEW,
                rule=Rule.CHANGING_PRIMARY_KEY,
                reason=f"the primary key in the database is on ({shown})",
                blocker=f"The primary key of {table.name!r} differs from the payload's "
                f"(database: {shown}); changing a primary key is not automatically applicable.",
            )
        wanted: list[tuple[str, list[str]]] = []
        if primary and table.tenant_scoped:
            wanted.append((names.tenant_key_name(table.name), unique_columns(table, primary)))
        wanted.extend(
            (names.unique_constraint_name(table.name, c.name), unique_columns(table, [c.name]))
            for c in table.columns
            if c.unique and not c.primary_key and live.column(c.name) is not None
        )
        for name, columns in wanted:
            index = live.index(name)
            if index is not None and index.unique and list(index.columns) == columns:
                continue
            if index is not None:
                self._replace_unique(table, name, columns, index.definition)
            elif live.unique_over(columns) is None:
                self._add_unique(table, name, columns)

    def _add_unique(self, table: Table, name: str, columns: list[str]) -> None:
        statement = render_alter(
            table.name,
            self.target,
            render.SQL_ADD_UNIQUE,
            name=quote_name(name),
            columns=quote_names(columns),
        )
        what = f"add the unique constraint {name!r} on {table.name} ({', '.join(columns)})"
        if self.has_rows(table.name) and table.name in self.catalog.tables:
            self._op(
                table,
                "add_unique",
                name,
                what,
                risk=Risk.REVIEW,
                rule=Rule.DISALLOWED_UNIQUE_CONSTRAINT,
                reason=f"{table.name!r} holds rows: the unique index is built under an ACCESS "
                "EXCLUSIVE lock, and duplicate values make it fail",
                statements=(statement,),
            )
        else:
            self._op(table, "add_unique", name, what, statements=(statement,))

    def _replace_unique(self, table: Table, name: str, columns: list[str], definition: str) -> None:
        drop = render_alter(
            table.name, self.target, render.SQL_DROP_CONSTRAINT, name=quote_name(name)
        )
        add = render_alter(
            table.name,
            self.target,
            render.SQL_ADD_UNIQUE,
            name=quote_name(name),
            columns=quote_names(columns),
        )
        self._op(
            table,
            "replace_unique",
            name,
            f"replace the unique constraint {name!r} with one on ({', '.join(columns)})",
            risk=Risk.REVIEW,
            rule=Rule.CHANGED_DEFINITION,
            reason=f"the database has {definition.partition(' USING ')[2] or definition}; a "
            "tenant table's uniqueness leads with tenant_id, so tenants cannot see each "
            "other's values",
            statements=(drop, add),
        )

    def _index(self, table: Table, live: LiveTable, index: Index) -> None:
        columns = index_columns(table, index)
        found = live.index(index.name)
        if found is not None and found.valid:
            if (
                found.unique == index.unique
                and list(found.columns) == columns
                and not found.partial
            ):
                return
            self._op(
                table,
                "add_index",
                index.name,
                f"index {index.name!r} on {table.name} ({', '.join(columns)})",
                risk=Risk.REVIEW,
                rule=Rule.CHANGED_DEFINITION,
                reason=f"the database has {found.definition}",
                blocker=f"The index {index.name!r} exists with another definition "
                f"({found.definition}). Drop it in a version of its own (drop_indexes), or "
                "give the new index another name.",
            )
            return
        what = f"create the index {index.name!r} on {table.name} ({', '.join(columns)})"
        rebuild: tuple[str, ...] = ()
        if found is not None:  # left invalid by a failed concurrent build
            what = f"rebuild the invalid index {index.name!r} on {table.name}"
            rebuild = (render.render_drop_index(index.name, self.target, concurrently=True),)
        if not self.has_rows(table.name):
            statements = (
                *(
                    render.render_drop_index(index.name, self.target, concurrently=False)
                    for _ in rebuild
                ),
                render.render_create_index(table, index, self.target),
            )
            self._op(table, "add_index", index.name, what, statements=statements)
            return
        if live.partitioned:
            self._op(
                table,
                "add_index",
                index.name,
                what,
                risk=Risk.REVIEW,
                rule=Rule.REQUIRE_CONCURRENT_INDEX_CREATION,
                reason="CREATE INDEX CONCURRENTLY is not supported on a partitioned table: the "
                "index is built inside the transaction and blocks writes while it is built",
                statements=(
                    *(
                        render.render_drop_index(index.name, self.target, concurrently=False)
                        for _ in rebuild
                    ),
                    render.render_create_index(table, index, self.target),
                ),
            )
            return
        drop = render.render_drop_index(index.name, self.target, concurrently=True)
        self._op(
            table,
            "add_index",
            index.name,
            what,
            reason=f"{table.name!r} holds rows: built CONCURRENTLY after COMMIT, without "
            "blocking writes",
            after_commit=(
                *rebuild,
                render.render_create_index(table, index, self.target, concurrently=True),
            ),
            cleanup=(drop,),
        )

    def _tenant_policy(self, table: Table, live: LiveTable) -> None:
        if not live.rls_enabled:
            self._op(
                table,
                "enable_rls",
                table.name,
                f"enable row level security on {table.name!r}",
                statements=(render.render_enable_rls(table.name, self.target),),
            )
        if not live.rls_forced:
            self._op(
                table,
                "force_rls",
                table.name,
                f"force row level security on {table.name!r} (for its owner too)",
                statements=(render.render_enable_rls(table.name, self.target, force=True),),
            )
        name = names.policy_name(table.name)
        policy = live.policy(name)
        if policy is None:
            self._op(
                table,
                "create_policy",
                name,
                f"create the tenant isolation policy {name!r} on {table.name!r}",
                statements=(render.render_create_policy(table, self.target),),
            )
        elif not _is_tenant_policy(
            policy.command, policy.permissive, policy.using, policy.with_check
        ):
            self._op(
                table,
                "create_policy",
                name,
                f"tenant isolation policy {name!r} on {table.name!r}",
                risk=Risk.REVIEW,
                rule=Rule.CHANGED_DEFINITION,
                reason=f"the database's policy reads USING ({policy.using}) WITH CHECK "
                f"({policy.with_check})",
                blocker=f"The policy {name!r} exists with another definition; the builder does "
                "not replace policies: review it and drop it by hand.",
            )

    def _trigger(self, table: Table, live: LiveTable) -> None:
        name = names.updated_at_trigger_name(table.name)
        trigger = live.trigger(name)
        if trigger is None or trigger.function != names.UPDATED_AT_FUNCTION:
            self._op(
                table,
                "create_trigger",
                name,
                f"create the trigger {name!r} that keeps {table.name}.updated_at current",
                statements=(render.render_updated_at_trigger(table, self.target),),
            )
        elif not trigger.enabled:
            self._op(
                table,
                "enable_trigger",
                name,
                f"enable the trigger {name!r} on {table.name!r}",
                statements=(
                    render_alter(
                        table.name, self.target, render.SQL_ENABLE_TRIGGER, name=quote_name(name)
                    ),
                ),
            )

    def _leftovers(self, table: Table, live: LiveTable) -> None:
        """Drop what the payload names; report what else the database holds beyond it."""
        wanted_columns = {c.name for c in table.columns}
        for name in table.drop_columns:
            if live.column(name) is None:
                self.notes.append(f"Column {table.name}.{name} to drop does not exist.")
                continue
            self.drops.append(
                Operation(
                    action="drop_column",
                    table=table.name,
                    subject=name,
                    description=f"drop column {table.name}.{name}",
                    risk=Risk.DESTRUCTIVE,
                    rule=Rule.BAN_DROP_COLUMN,
                    reason="the column's data is lost, and code that still reads it breaks",
                    statements=(
                        render_alter(
                            table.name,
                            self.target,
                            render.SQL_DROP_COLUMN,
                            column=quote_name(name),
                        ),
                    ),
                )
            )
        self.notes.extend(
            f"Column {table.name}.{c.name} is in the database but not in the payload; it is "
            "left as it is (name it in drop_columns to drop it)."
            for c in live.columns
            if c.name not in wanted_columns and c.name not in table.drop_columns
        )
        wanted_indexes = {i.name for i in table.indexes}
        kept = {
            names.primary_key_name(table.name),
            names.tenant_key_name(table.name),
            *(names.unique_constraint_name(table.name, c.name) for c in table.columns),
        }
        for name in table.drop_indexes:
            index = live.index(name)
            if index is None:
                self.notes.append(f"Index {name!r} to drop does not exist on {table.name!r}.")
                continue
            if index.constraint is not None:
                self.drops.append(
                    Operation(
                        action="drop_index",
                        table=table.name,
                        subject=name,
                        description=f"drop index {name!r}",
                        risk=Risk.DESTRUCTIVE,
                        rule=Rule.BAN_DROP_INDEX,
                        reason="the index backs a constraint",
                        blocker=f"The index {name!r} backs the constraint "
                        f"{index.constraint!r}; it is not dropped automatically.",
                    )
                )
                continue
            concurrently = self.has_rows(table.name) and not live.partitioned
            drop = render.render_drop_index(name, self.target, concurrently=concurrently)
            self.drops.append(
                Operation(
                    action="drop_index",
                    table=table.name,
                    subject=name,
                    description=f"drop index {name!r} of {table.name!r}",
                    risk=Risk.DESTRUCTIVE,
                    rule=Rule.BAN_DROP_INDEX,
                    reason="queries that use the index get slower"
                    + (", and a unique index stops guarding its values" if index.unique else ""),
                    statements=() if concurrently else (drop,),
                    after_commit=(drop,) if concurrently else (),
                )
            )
        self.notes.extend(
            f"Index {i.name!r} of {table.name!r} is in the database but not in the payload; it "
            "is left as it is (name it in drop_indexes to drop it)."
            for i in live.indexes
            if i.name not in wanted_indexes
            and i.name not in kept
            and i.name not in table.drop_indexes
            and i.constraint is None
        )

    # --- foreign keys, after every table exists -----------------------------------------------

    def _foreign_key(self, table: Table, column: Column, reference: ForeignKey) -> None:
        name = names.foreign_key_name(table.name, column.name)
        what = f"foreign key {name!r}: {table.name}.{column.name} -> {reference.table}"
        to_tenant = self._referenced_tenant_scope(table, column, reference, name, what)
        if to_tenant is None:
            return
        composite = to_tenant
        live = self.catalog.table(table.name)
        if live is None:  # created by this plan: added valid at once (the table is empty)
            self.foreign_keys.append(
                Operation(
                    action="add_foreign_key",
                    table=table.name,
                    subject=name,
                    description=f"add the {what}",
                    statements=(
                        render.render_foreign_key(
                            table, column, reference, self.target, to_tenant_scoped=composite
                        ),
                    ),
                )
            )
            return
        found = live.foreign_key(name)
        columns = [TENANT_COLUMN, column.name] if composite else [column.name]
        to_columns = [TENANT_COLUMN, reference.column] if composite else [reference.column]
        validate = render_alter(
            table.name, self.target, render.SQL_VALIDATE_CONSTRAINT, name=quote_name(name)
        )
        if found is not None and _same_key(found, columns, reference.table, to_columns):
            if not found.validated:
                self.foreign_keys.append(
                    Operation(
                        action="validate_foreign_key",
                        table=table.name,
                        subject=name,
                        description=f"validate the {what}",
                        reason="the key is NOT VALID: its existing rows were never checked",
                        after_commit=(validate,),
                    )
                )
            return
        add = render.render_foreign_key_not_valid(
            table, column, reference, self.target, composite=composite
        )
        statements: tuple[str, ...] = (add,)
        kw: dict[str, Any] = {}
        if found is not None:
            statements = (
                render_alter(
                    table.name, self.target, render.SQL_DROP_CONSTRAINT, name=quote_name(name)
                ),
                add,
            )
            kw = {
                "risk": Risk.REVIEW,
                "rule": Rule.CHANGED_DEFINITION,
                "reason": f"the database's key is {found.definition}; it is replaced",
            }
        else:
            kw = {
                "reason": "added NOT VALID (new rows are checked at once), then validated after "
                "COMMIT without blocking writes",
            }
        self.foreign_keys.append(
            Operation(
                action="add_foreign_key",
                table=table.name,
                subject=name,
                description=f"add the {what}",
                statements=statements,
                after_commit=(validate,),
                **kw,
            )
        )

    def _referenced_tenant_scope(
        self, table: Table, column: Column, reference: ForeignKey, name: str, what: str
    ) -> bool | None:
        """Whether the referenced table is tenant-scoped; None (and a blocker) if unusable."""
        desired = self.schema.table(reference.table)
        if desired is not None:
            return desired.tenant_scoped
        live = self.catalog.table(reference.table)
        problem = None
        rule = Rule.UNKNOWN_REFERENCE
        if live is None or reference.table in self.schema.drop_tables:
            problem = (
                f"The table {reference.table!r} is neither in the payload nor in the database."
                if live is None
                else f"The table {reference.table!r} is referenced and dropped by the same payload."
            )
            to_tenant = False
        else:
            to_tenant = live.column(TENANT_COLUMN) is not None
            key = [TENANT_COLUMN, reference.column] if to_tenant else [reference.column]
            if live.column(reference.column) is None:
                problem = f"The table {reference.table!r} has no column {reference.column!r}."
            elif to_tenant and not table.tenant_scoped:
                rule = Rule.CROSS_TENANT_REFERENCE
                problem = (
                    f"The global table {table.name!r} cannot reference the tenant-scoped "
                    f"table {reference.table!r}: its rows would point into one tenant's rows."
                )
            elif live.unique_over(key) is None:
                problem = (
                    f"The table {reference.table!r} has no unique constraint on "
                    f"({', '.join(key)}) for the key to reference; list it in the payload so "
                    "that its keys are added."
                )
        if problem is None:
            return to_tenant
        self.foreign_keys.append(
            Operation(
                action="add_foreign_key",
                table=table.name,
                subject=name,
                description=f"add the {what}",
                risk=Risk.REVIEW,
                rule=rule,
                reason=problem,
                blocker=problem,
            )
        )
        return None

    def _drop_table(self, name: str) -> None:
        if self.catalog.table(name) is None:
            self.notes.append(f"Table {name!r} to drop does not exist.")
            return
        self.drops.append(
            Operation(
                action="drop_table",
                table=name,
                subject=name,
                description=f"drop table {name!r}",
                risk=Risk.DESTRUCTIVE,
                rule=Rule.BAN_DROP_TABLE,
                reason="every row of the table is lost (tables that reference it stop the drop)",
                statements=(render.render_drop_table(name, self.target),),
            )
        )


def _same_key(
    found: LiveForeignKey, columns: list[str], to_table: str, to_columns: list[str]
) -> bool:
    return (
        list(found.columns) == columns
        and found.to_table == to_table
        and list(found.to_columns) == to_columns
    )


def _is_tenant_policy(
    command: str, permissive: bool, using: str | None, with_check: str | None
) -> bool:
    """Whether a policy is the builder's tenant policy: ALL, permissive, both predicates on
    `tenant_id` against the session's tenant setting."""
    return (
        command == "*"
        and permissive
        and using is not None
        and using == with_check
        and TENANT_COLUMN in using
        and TENANT_SETTING in using
    )
