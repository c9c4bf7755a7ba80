"""The lock budget of an apply against a real PostgreSQL: the estimate, and the refusal."""

from __future__ import annotations

import copy
import math
from typing import Any

import psycopg
import pytest
from psycopg import sql

from builder.db import introspect, locks
from builder.db.apply import ApplySettings
from builder.evolve.plan import Plan, catalog_names, make_plan, tables_needing_rows
from builder.pipeline import Prepared, apply_prepared, offline_plan, prepare, run_schema_builder
from builder.schema.names import UPDATED_AT_FUNCTION
from builder.status import Status
from tests.builder.helpers import PATIENTS, envelope

# The distinct objects this backend holds locks on (one entry each in the shared lock table,
# whatever the modes).
HELD = """\
SELECT count(*) FROM (
    SELECT DISTINCT locktype, database, relation, classid, objid, objsubid,
                    virtualxid::text, transactionid::text
    FROM pg_locks WHERE pid = pg_backend_pid()) AS held"""


def simple_tables(count: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [
        {"name": f"{prefix}{i:04d}", "columns": [{"name": "note", "type": "TEXT"}]}
        for i in range(count)
    ]


def mixed_tables() -> list[dict[str, Any]]:
    """Tenant and global tables with unique columns, indexes and foreign keys."""
    kinds = {
        "name": "kinds",
        "tenant_scoped": False,
        "columns": [{"name": "code", "type": "VARCHAR(20)", "unique": True}],
    }
    visits = {
        "name": "visits",
        "columns": [
            {"name": "patient_id", "type": "UUID", "references": {"table": "patients"}},
            {"name": "kind_id", "type": "UUID", "references": {"table": "kinds"}},
            {"name": "seen_at", "type": "TIMESTAMPTZ", "not_null": True},
            {"name": "notes", "type": "JSONB"},
        ],
        "indexes": [{"columns": ["seen_at"]}, {"columns": ["patient_id", "seen_at"]}],
    }
    return [PATIENTS, kinds, visits]


def prepared_of(request: dict[str, Any], target: str) -> Prepared:
    prepared = prepare(request, target_schema=target)
    assert isinstance(prepared, Prepared), prepared
    return prepared


def planned(conn: psycopg.Connection, prepared: Prepared, target: str) -> tuple[Plan, int]:
    """The plan an apply would make now, and its lock estimate."""
    schema = prepared.schema
    live = introspect.read_catalog(
        conn, target, catalog_names(schema), functions=[UPDATED_AT_FUNCTION]
    )
    occupied = introspect.tables_with_rows(conn, target, tables_needing_rows(schema, live))
    plan = make_plan(schema, live, occupied=occupied)
    return plan, locks.estimate_locks(plan, live)


def apply_counting(
    conn: psycopg.Connection, request: dict[str, Any], target: str
) -> tuple[int, int]:
    """Apply `request` (approved: whatever its risk) and return (estimate, locks held at
    COMMIT)."""
    prepared = prepared_of(request, target)
    plan, estimate = planned(conn, prepared, target)
    held: list[int] = []

    def count(_: Prepared) -> None:
        row = conn.execute(HELD).fetchone()
        assert row is not None
        held.append(row[0])

    outcome = apply_prepared(
        prepared,
        conn,
        settings=ApplySettings(target_schema=target, max_lock_share=1.0),
        before_commit=count,
        approved_checksum=plan.migration.checksum,
    )
    assert outcome.status == Status.APPLIED, outcome.response["result"]
    return estimate, held[0]


def relations(conn: psycopg.Connection, target: str) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s",
        [target],
    ).fetchall()
    return {row[0] for row in rows}


def ledger_versions(conn: psycopg.Connection, target: str) -> list[str]:
    query = sql.SQL("SELECT version FROM {} ORDER BY applied_at").format(
        sql.Identifier(target, "schema_migrations")
    )
    return [row[0] for row in conn.execute(query).fetchall()]


def test_reads_the_settings_that_size_the_shared_lock_table(target_conn):
    table = locks.read_lock_table(target_conn)

    shown = [
        int(target_conn.execute(f"SHOW {name}").fetchone()[0])
        for name in ("max_locks_per_transaction", "max_connections", "max_prepared_transactions")
    ]
    assert [
        table.max_locks_per_transaction,
        table.max_connections,
        table.max_prepared_transactions,
    ] == shown
    assert table.capacity == shown[0] * (shown[1] + shown[2])


# --- the estimate against what PostgreSQL holds ------------------------------------------------


def assert_close_above(estimate: int, held: int) -> None:
    """Never below what was held, and not far above it."""
    assert held <= estimate <= 1.25 * held + 30, (estimate, held)


def test_the_estimate_covers_the_locks_of_a_first_apply(target_conn, target_schema):
    request = envelope([*mixed_tables(), *simple_tables(20)])

    assert_close_above(*apply_counting(target_conn, request, target_schema))


def test_the_estimate_covers_the_locks_of_an_evolution(target_conn, target_schema):
    tables = mixed_tables()
    apply_counting(target_conn, envelope([*tables, *simple_tables(3, "old")]), target_schema)
    target_conn.execute(
        sql.SQL("INSERT INTO {} (tenant_id, first_name, last_name) VALUES (%s, 'a', 'b')").format(
            sql.Identifier(target_schema, "patients")
        ),
        ["00000000-0000-0000-0000-000000000001"],
    )
    changed = copy.deepcopy(tables)
    patients, kinds, visits = changed
    patients["columns"].append({"name": "email", "type": "TEXT"})
    patients["columns"][3]["type"] = "VARCHAR(40)"  # mrn: a rewrite of a table with rows
    patients["indexes"].append({"columns": ["email"]})  # built after COMMIT: it holds rows
    kinds["columns"].append({"name": "label", "type": "TEXT", "unique": True})
    visits["drop_indexes"] = ["idx_visits_seen_at"]
    visits["indexes"] = visits["indexes"][1:]
    referencing = {
        "name": "notes",
        "columns": [{"name": "visit_id", "type": "UUID", "references": {"table": "visits"}}],
    }
    request = envelope(
        [*changed, referencing],
        version="002",
        drop_tables=["old0000", "old0001"],
        allow_destructive=True,
    )

    assert_close_above(*apply_counting(target_conn, request, target_schema))


def test_a_foreign_key_to_a_table_of_an_earlier_version_counts_that_table(
    target_conn, target_schema
):
    apply_counting(target_conn, envelope([PATIENTS]), target_schema)
    visits = {
        "name": "visits",
        "columns": [{"name": "patient_id", "type": "UUID", "references": {"table": "patients"}}],
    }

    assert_close_above(*apply_counting(target_conn, envelope([visits], "002"), target_schema))


# --- the budget on the server as it is configured ------------------------------------------------


def budget(conn: psycopg.Connection) -> tuple[float, int]:
    """The share of the server's lock table one apply may take in these tests, and its limit.

    The default share, unless the server's table is so large that a version reaching it
    would take long to apply: then a share that allows about 1,500 locks.
    """
    capacity = locks.read_lock_table(conn).capacity
    share = ApplySettings().max_lock_share
    if capacity * share > 4_000:
        share = 1_500 / capacity
    return share, math.floor(capacity * share)


def offline_estimate(tables: int, target: str) -> int:
    prepared = prepared_of(envelope(simple_tables(tables)), target)
    catalog = introspect.Catalog(schema=target)
    return locks.estimate_locks(offline_plan(prepared, target), catalog)


def tables_within(allowed: int, target: str) -> int:
    """The most tables of `simple_tables` whose first apply stays within `allowed` locks."""
    one, two = offline_estimate(1, target), offline_estimate(2, target)
    count = 1 + (allowed - one) // (two - one)
    assert offline_estimate(count, target) <= allowed < offline_estimate(count + 1, target)
    return count


@pytest.fixture
def seeded(target_conn, target_schema) -> str:
    """The target schema with a first version applied (the ledger exists)."""
    seed = envelope([{"name": "seed", "columns": []}], version="000")
    assert (
        run_schema_builder(
            seed, target_conn, settings=ApplySettings(target_schema=target_schema)
        ).status
        == Status.APPLIED
    )
    return target_schema


def test_a_version_just_over_the_budget_is_refused_before_anything_runs(target_conn, seeded):
    share, allowed = budget(target_conn)
    count = tables_within(allowed, seeded) + 1
    estimate = offline_estimate(count, seeded)
    before = relations(target_conn, seeded)
    settings = ApplySettings(target_schema=seeded, max_lock_share=share)

    outcome = run_schema_builder(envelope(simple_tables(count)), target_conn, settings=settings)

    assert (outcome.status, outcome.http_status) == (Status.BLOCKED, 400)
    result = outcome.response["result"]
    [error] = result["validation_errors"]
    assert (error["path"], error["code"]) == ("payload.tables", "too_many_locks")
    message = error["message"]
    assert f"about {estimate:,} locks" in message and f"at most {allowed:,}" in message
    assert "max_locks_per_transaction" in message and "WF106_MAX_LOCK_SHARE" in message
    assert "Split the version" in message
    # Nothing ran, and the refusal is not a failed attempt of the ledger.
    assert relations(target_conn, seeded) == before
    assert ledger_versions(target_conn, seeded) == ["000"]
    assert outcome.response["audit"]["data_written"] == []


def test_the_budget_refuses_a_version_before_it_is_held_for_review(target_conn, seeded):
    share, allowed = budget(target_conn)
    request = envelope(simple_tables(tables_within(allowed, seeded) + 1))
    request["context"]["validation_profile"] = "review"
    settings = ApplySettings(target_schema=seeded, max_lock_share=share)

    outcome = run_schema_builder(request, target_conn, settings=settings)

    assert outcome.status == Status.BLOCKED
    assert [e["code"] for e in outcome.validation_errors] == ["too_many_locks"]


def test_a_version_just_within_the_budget_is_applied(target_conn, target_schema):
    share, allowed = budget(target_conn)
    count = tables_within(allowed, target_schema)
    prepared = prepared_of(envelope(simple_tables(count)), target_schema)
    held: list[int] = []

    def count_locks(_: Prepared) -> None:
        held.append(target_conn.execute(HELD).fetchone()[0])

    outcome = apply_prepared(
        prepared,
        target_conn,
        settings=ApplySettings(target_schema=target_schema, max_lock_share=share),
        before_commit=count_locks,
    )

    assert outcome.status == Status.APPLIED, outcome.response["result"]
    assert len(relations(target_conn, target_schema) & {f"t{i:04d}" for i in range(count)}) == count
    assert held[0] <= allowed
