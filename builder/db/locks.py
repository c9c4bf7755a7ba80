"""The lock budget of an apply: refuse, before it runs, a transaction the target cannot hold.

Every lock a transaction takes is kept until its COMMIT, and PostgreSQL keeps them in one
shared lock table sized at server start. Its documentation (runtime-config-locks, "Lock
Management"): "The shared lock table tracks locks on max_locks_per_transaction *
(max_connections + max_prepared_transactions) objects (e.g., tables); hence, no more than this
many distinct objects can be locked at any one time. [...] individual transactions can lock more
objects as long as the locks of all transactions fit in the lock table."
(https://www.postgresql.org/docs/15/runtime-config-locks.html). A transaction that finds the
table full fails with "out of shared memory", and so does any other connection that needs a
lock at that moment.

An apply creates and alters tables in one transaction, so it holds a lock on every object it
touches until its COMMIT: with the default settings (64 x (100 + 0) = 6,400 objects) a version
of 200 tables of twenty columns (about 3,400 objects) takes more than half of the table on its
own. `refusal` estimates the locks from the plan (`estimate_locks`), reads the three settings
(one query), and refuses the plan when the estimate is over `max_share` of the table.

The rule is a share of the whole table rather than a multiple of `max_locks_per_transaction`,
since the table is shared: what matters is what the apply leaves to the other connections. With
the default share (`ApplySettings.max_lock_share`, 0.3) they keep 70% of it, on average 45 of
the 64 objects per connection of the default setting even when every connection is in use; the
real table is larger than the formula (it is sized for every backend, autovacuum and background
workers included, and may borrow spare shared memory), which adds margin. On a default server
one apply may hold 1,920 objects: a version of 100 tables of ten columns (about 1,600) passes,
one of 200 tables of twenty columns does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import psycopg

from builder.db.introspect import Catalog, LiveTable
from builder.evolve.plan import Operation, Plan
from builder.evolve.risk import Decision, Verdict
from builder.schema import names
from builder.schema.spec import Table

TOO_MANY_LOCKS = "too_many_locks"

# What every apply holds whatever its plan: the advisory lock of the target schema, its
# transaction id and virtual transaction id, the target schema, the updated_at function and its
# language; and the system catalogs and their indexes that its DDL writes and its catalog
# queries read, about 20 of them with PostgreSQL 15, counted twice over.
BASE_LOCKS = 6 + 40
# The ledger: its table, TOAST table and TOAST index, its three indexes, its row type and its
# primary key constraint (created by the first apply, written by every one).
LEDGER_LOCKS = 8
# Objects that a change to an existing table adds to what it holds: the new index (and its
# constraint), the new constraint, or the transient table, TOAST table and TOAST index of a
# rewrite (a column type change, or a column whose default is computed per row).
_ADDED_BY_ACTION = {
    "add_index": 1,
    "add_unique": 2,
    "replace_unique": 2,
    "add_foreign_key": 1,
    "set_not_null": 1,
    "alter_column_type": 3,
    "add_column": 3,
}


@dataclass(frozen=True)
class LockTable:
    """The target's settings that size its shared lock table."""

    max_locks_per_transaction: int
    max_connections: int
    max_prepared_transactions: int

    @property
    def capacity(self) -> int:
        """The objects the shared lock table has room for, by the documentation's formula.

        The server sizes it for every backend (autovacuum and background workers too) and has
        some slack memory beyond it, so this is the careful figure.
        """
        return self.max_locks_per_transaction * (
            self.max_connections + self.max_prepared_transactions
        )


_LOCK_SETTINGS = """\
SELECT current_setting('max_locks_per_transaction')::int,
       current_setting('max_connections')::int,
       current_setting('max_prepared_transactions')::int"""


def read_lock_table(conn: psycopg.Connection[Any]) -> LockTable:
    """Read the settings that size the target's shared lock table (one query)."""
    row = conn.execute(_LOCK_SETTINGS).fetchone()
    assert row is not None
    return LockTable(*row)


def refusal(
    conn: psycopg.Connection[Any], plan: Plan, catalog: Catalog, max_share: float
) -> Verdict | None:
    """Return the gate's refusal of `plan` if it needs more locks than the target can spare.

    `catalog` is what the plan was made against. The refusal's reason is the message of its
    validation error: the estimate, the limit, and what to raise or split.
    """
    table = read_lock_table(conn)
    needed = estimate_locks(plan, catalog)
    allowed = math.floor(table.capacity * max_share)
    if needed <= allowed:
        return None
    return Verdict(Decision.BLOCK, _explain(needed, allowed, table, max_share), TOO_MANY_LOCKS)


def _explain(needed: int, allowed: int, table: LockTable, max_share: float) -> str:
    return (
        f"Applying this version would hold about {needed:,} locks until its COMMIT; one apply "
        f"may take at most {allowed:,} on this server, {max_share:.0%} of its shared lock table "
        f"of {table.capacity:,} (max_locks_per_transaction {table.max_locks_per_transaction} x "
        f"(max_connections {table.max_connections} + max_prepared_transactions "
        f"{table.max_prepared_transactions})). Split the version into smaller ones, or raise "
        "max_locks_per_transaction on the server (it takes a restart), or the share one apply "
        "may take (the setting WF106_MAX_LOCK_SHARE); nothing was executed."
    )


def estimate_locks(plan: Plan, catalog: Catalog) -> int:
    """Estimate the distinct objects the apply's transaction locks until its COMMIT.

    Each object counts once, whatever its lock modes (the table has one entry per object), and
    the estimate errs on the high side:

    - every apply: `BASE_LOCKS` and `LEDGER_LOCKS`;
    - a table the plan creates: the table, its TOAST table and TOAST index (counted even when no
      column needs them), its row type, each of its indexes, and the index and constraint of
      its primary key, its `(tenant_id, id)` key and each unique column, and its foreign keys;
    - an existing table the plan changes, reads the rows of, drops, or references by a new
      foreign key: the table, its TOAST table and index, its row type, every index and
      constraint it has (a rewrite rebuilds the indexes, and reading the table plans a query
      over all of them), and, for a drop, its defaults, policies and triggers, dropped with it;
    - plus what each change to an existing table adds (`_ADDED_BY_ACTION`).

    The builder uses no sequences (serial types are not allowed), and statements that run
    after COMMIT hold their locks one at a time, so neither counts. Not counted: the partitions
    of an existing partitioned table, which an ALTER TABLE reaches too; the catalog does not
    list them. Weak locks that fit in a backend's fast-path slots (16 before PostgreSQL 18)
    do not take room in the shared table: counting them errs on the high side too.
    """
    schema = plan.schema
    created = {op.table for op in plan.operations if op.action == "create_table"}
    count = BASE_LOCKS + LEDGER_LOCKS
    for name in created:
        table = schema.table(name)
        assert table is not None
        count += _new_table_locks(table)
    dropped = {op.table for op in plan.operations if op.action == "drop_table"}
    for name in _live_tables(plan, catalog, created):
        count += _live_table_locks(catalog.tables[name], dropped=name in dropped)
    count += sum(_added_locks(op) for op in plan.operations if op.table not in created)
    return count


def _new_table_locks(table: Table) -> int:
    """The objects a created table is locked as: itself, its indexes, keys and constraints."""
    keys = sum(1 for c in table.columns if c.unique and not c.primary_key)
    if any(c.primary_key for c in table.columns):
        keys += 2 if table.tenant_scoped else 1
    foreign_keys = sum(1 for c in table.columns if c.references is not None)
    # The table, TOAST table and index, row type; each index; each key's index and constraint.
    return 4 + len(table.indexes) + 2 * keys + foreign_keys


def _live_tables(plan: Plan, catalog: Catalog, created: set[str]) -> set[str]:
    """The existing tables the apply locks: those the plan touches or whose keys it references."""
    touched = {op.table for op in plan.operations if op.table in catalog.tables}
    referenced = _referenced_by_new_keys(plan)
    return {name for name in touched | referenced if name in catalog.tables} - created


def _referenced_by_new_keys(plan: Plan) -> set[str]:
    """The tables referenced by the foreign keys the transaction adds (they are locked too,
    and checking a key added valid reads them)."""
    adding = {op.subject for op in plan.operations if op.action == "add_foreign_key"}
    return {
        column.references.table
        for table in plan.schema.tables
        for column in table.columns
        if column.references is not None
        and names.foreign_key_name(table.name, column.name) in adding
    }


def _live_table_locks(table: LiveTable, *, dropped: bool) -> int:
    """The objects an existing table is locked as (more when it is dropped)."""
    constraints = sum(1 for i in table.indexes if i.constraint is not None)
    constraints += len(table.foreign_keys) + len(table.checks)
    count = 4 + len(table.indexes) + constraints
    if dropped:
        defaults = sum(1 for c in table.columns if c.default is not None)
        # The array type is dropped with the row type.
        count += 1 + defaults + len(table.policies) + len(table.triggers)
    return count


def _added_locks(op: Operation) -> int:
    """What one operation on an existing table adds to the objects it holds (0 after COMMIT)."""
    if not op.statements:
        return 0
    return _ADDED_BY_ACTION.get(op.action, 0)
