"""Schema evolution: introspection plus diff of a 1,000-table database, and a no-change re-plan.

What is timed is `builder.pipeline.plan_against(conn, schema, target_schema)`, what a `dry_run`,
`schema_diff` and the admin's preview run against the target (an apply runs the same steps
under its lock): `read_catalog` of the tables the payload names (7 queries whatever the number
of tables, see builder/db/introspect.py), `tables_needing_rows` (a first pass of the planner,
assuming every table holds rows, to learn which existing tables the plan changes),
`tables_with_rows` of those (1 query, none when no table changes) and `make_plan` (the planner
again, then the parser check of the plan's statements). The payload is prepared once
(`pipeline.prepare`, untimed), as a request has it before it plans.

1. 1,000 tables. A scratch schema `evolution_large` holding 1,000 tables created by the builder
   itself: 10 caller columns each (text, varchar with a unique constraint, numeric, integer,
   boolean, date, timestamptz, jsonb, uuid; defaults and NOT NULL on some), 2 caller indexes,
   every 20th table global and the others tenant-scoped, and on every 10th table a foreign key
   to an earlier table (100 in all); the builder adds its default columns, keys, indexes, row
   level security, policy and trigger. All 1,000 in one transaction fail with "out of shared
   memory" under the default `max_locks_per_transaction` (64), so they are applied with
   `run_schema_builder` as 10 versions of 100 tables (`001` to `010`; a version's foreign keys
   may reference tables of earlier versions), untimed. The timed payload describes the same
   1,000 tables with one added nullable column on 10 of them: its plan is 10 `add_column`
   operations (checked every time). One warm-up, then `--runs` (5) timed runs; each run times
   `plan_against` as a whole, then its steps one by one: `read_catalog`; its 7 queries alone,
   executed and fetched with the same parameters without building the catalog (server time,
   transfer and psycopg's decoding; the rest of `read_catalog` is building the Python
   objects); `tables_needing_rows`; `tables_with_rows`; `make_plan`, with and without its
   parser check. Target: median `plan_against` under 2 s.
2. No-change re-plan of the foundation. tests/fixtures/foundation_v001.json (10 tables) applied
   to the scratch schema `evolution_foundation`, then the same payload planned against it again:
   the plan must be empty (the script stops with an error otherwise). In turn, after 5 warm-up
   rounds, `--replans` (20) times each: a bare `SELECT 1` round trip (the baseline),
   `plan_against`, `read_catalog` alone, `make_plan` alone, and `plan_against` on a second
   connection. Target: median `plan_against` under 50 ms.

The judged connection has psycopg's statement preparation turned off (`prepare_threshold=None`),
so every query is parsed and planned by the server each time, as on a fresh connection (the
command line); the second connection of part 2 keeps psycopg's default (a statement run 5 times
is prepared), as the server's pooled connections do. The number of queries each plan sends is
counted once, untimed, by wrapping the connection's `execute`. The builder's caches are warm, as
in a process that has just prepared the payload. Both parts run in one scratch database, always
dropped. About 25 s on a 2-core machine, most of it creating the 1,000 tables.

    .venv/bin/python bench/evolution.py [--runs 5] [--replans 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from unittest import mock

import psycopg
from _common import (
    load_fixture,
    print_header,
    print_table,
    python_speed_ms,
    scratch_database,
    timed,
    verdict,
)

from builder.db import introspect
from builder.db.apply import ApplySettings
from builder.evolve.plan import Plan, catalog_names, make_plan, tables_needing_rows
from builder.pipeline import Prepared, plan_against, prepare, run_schema_builder
from builder.schema.names import UPDATED_AT_FUNCTION
from builder.schema.spec import Schema

TABLES = 1000
CHUNK = 100
CHANGED_EVERY = 100  # one added column on every 100th table: 10 of 1,000
EXTRA_COLUMN = "bench_extra"
LARGE = "evolution_large"
FOUNDATION = "evolution_foundation"
TARGET_LARGE_MS = 2000.0
TARGET_REPLAN_MS = 50.0
REPLAN_WARMUP = 5


def bench_table(i: int, *, extra: bool = False) -> dict[str, Any]:
    """Return table `i`: 10 caller columns, 2 indexes, a foreign key on every 10th table."""
    columns: list[dict[str, Any]] = [
        {"name": "name", "type": "TEXT", "not_null": True},
        {"name": "code", "type": "VARCHAR(64)", "unique": True},
        {"name": "amount", "type": "NUMERIC(12,2)", "default": 0},
        {"name": "quantity", "type": "INTEGER", "not_null": True, "default": 0},
        {"name": "is_active", "type": "BOOLEAN", "not_null": True, "default": True},
        {"name": "born_on", "type": "DATE"},
        {"name": "seen_at", "type": "TIMESTAMPTZ", "default": "now()"},
        {"name": "attributes", "type": "JSONB", "default": "'{}'"},
        {"name": "notes", "type": "TEXT"},
        {"name": "parent_id", "type": "UUID"},
    ]
    # Tables 5, 15, 25, ... reference table i // 2 (ending in 2 or 7: always tenant-scoped, as
    # is the referencing table), often one of an earlier version.
    if i % 10 == 5:
        columns[-1]["references"] = {"table": table_name(i // 2)}
    if extra:
        columns.append({"name": EXTRA_COLUMN, "type": "TEXT"})
    return {
        "name": table_name(i),
        "tenant_scoped": i % 20 != 19,
        "columns": columns,
        "indexes": [{"columns": ["name"]}, {"columns": ["seen_at", "quantity"]}],
    }


def table_name(i: int) -> str:
    return f"item_{i:04d}"


def envelope(version: str, tables: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "meta": {"tenant_id": "t_bench"},
        "payload": {
            "schema_version": version,
            "description": f"evolution benchmark, {len(tables)} tables",
            "tables": tables,
        },
    }


def apply(conn: psycopg.Connection[Any], raw: dict[str, Any], target: str) -> None:
    outcome = run_schema_builder(raw, conn, settings=ApplySettings(target_schema=target))
    if outcome.status != "applied":
        version = raw["payload"]["schema_version"]
        raise SystemExit(f"apply of {version} to {target}: {outcome.status}: {outcome.error}")


def prepared_schema(raw: dict[str, Any], target: str) -> Schema:
    prepared = prepare(raw, target_schema=target)
    assert isinstance(prepared, Prepared), prepared
    return prepared.schema


def count_queries(conn: psycopg.Connection[Any], func: Callable[[], object]) -> int:
    """Call `func` once and return how many statements it sent through `conn.execute`."""
    with mock.patch.object(conn, "execute", wraps=conn.execute) as execute:
        func()
    return execute.call_count


def read_live(conn: psycopg.Connection[Any], schema: Schema, target: str) -> introspect.Catalog:
    return introspect.read_catalog(
        conn, target, catalog_names(schema), functions=[UPDATED_AT_FUNCTION]
    )


CATALOG_QUERIES: dict[str, Any] = {
    "tables": introspect._TABLES,
    "columns": introspect._COLUMNS,
    "indexes": introspect._INDEXES,
    "constraints": introspect._CONSTRAINTS,
    "policies": introspect._POLICIES,
    "triggers": introspect._TRIGGERS,
    "functions": introspect._FUNCTIONS,
}


def raw_catalog_queries(
    conn: psycopg.Connection[Any], schema: Schema, target: str
) -> dict[str, tuple[int, float]]:
    """Run read_catalog's 7 queries with its parameters, fetching the rows and building nothing.

    Return (rows, ms) per query.
    """
    params = {
        "schema": target,
        "names": sorted(set(catalog_names(schema))),
        "functions": [UPDATED_AT_FUNCTION],
    }
    out = {}
    for label, query in CATALOG_QUERIES.items():
        started = time.perf_counter()
        rows = conn.execute(query, params).fetchall()
        out[label] = (len(rows), (time.perf_counter() - started) * 1000)
    return out


def check_large_plan(plan: Plan, changed: int) -> None:
    actions = [(op.action, op.subject) for op in plan.operations]
    if actions != [("add_column", EXTRA_COLUMN)] * changed:
        raise SystemExit(f"the 1,000-table plan is not {changed} add_column operations: {actions}")


def large_part(conn: psycopg.Connection[Any], runs: int) -> dict[str, Any]:
    """Create the 1,000 tables, then time plan_against and its steps; return what was measured."""
    conn.execute(f"CREATE SCHEMA {LARGE}")
    versions = [
        envelope(
            f"{start // CHUNK + 1:03d}",
            [bench_table(i) for i in range(start, min(start + CHUNK, TABLES))],
        )
        for start in range(0, TABLES, CHUNK)
    ]
    started = time.perf_counter()
    for version in versions:
        apply(conn, version, LARGE)
    apply_s = time.perf_counter() - started
    changed = len(range(0, TABLES, CHANGED_EVERY))
    raw = envelope(
        f"{len(versions) + 1:03d}",
        [bench_table(i, extra=i % CHANGED_EVERY == 0) for i in range(TABLES)],
    )
    schema, prepare_ms = timed(lambda: prepared_schema(raw, LARGE))
    check_large_plan(plan_against(conn, schema, LARGE), changed)  # the warm-up
    queries = count_queries(conn, lambda: plan_against(conn, schema, LARGE))
    catalog_queries = count_queries(conn, lambda: read_live(conn, schema, LARGE))
    samples: dict[str, list[float]] = {}
    query_rows: dict[str, int] = {}

    def sample(key: str, ms: float) -> None:
        samples.setdefault(key, []).append(ms)

    for _ in range(runs):
        plan, ms = timed(lambda: plan_against(conn, schema, LARGE))
        check_large_plan(plan, changed)
        sample("plan_against", ms)
        live, ms = timed(lambda: read_live(conn, schema, LARGE))
        sample("read_catalog", ms)
        for label, (rows, ms) in raw_catalog_queries(conn, schema, LARGE).items():
            sample(f"query {label}", ms)
            query_rows[label] = rows
        needing, ms = timed(partial(tables_needing_rows, schema, live))
        sample("tables_needing_rows", ms)
        occupied, ms = timed(partial(introspect.tables_with_rows, conn, LARGE, needing))
        sample("tables_with_rows", ms)
        plan, ms = timed(partial(make_plan, schema, live, occupied=occupied))
        check_large_plan(plan, changed)
        sample("make_plan", ms)
        _, ms = timed(partial(make_plan, schema, live, occupied=occupied, check=False))
        sample("make_plan unchecked", ms)
    tables = live.tables.values()
    return {
        "apply_s": apply_s,
        "prepare_ms": prepare_ms,
        "tables": len(live.tables),
        "columns": sum(len(t.columns) for t in tables),
        "indexes": sum(len(t.indexes) for t in tables),
        "foreign_keys": sum(len(t.foreign_keys) for t in tables),
        "policies": sum(len(t.policies) for t in tables),
        "triggers": sum(len(t.triggers) for t in tables),
        "query_rows": query_rows,
        "changed": changed,
        "needing": len(needing),
        "queries": queries,
        "catalog_queries": catalog_queries,
        "samples": samples,
    }


def foundation_part(
    conn: psycopg.Connection[Any], prepared_conn: psycopg.Connection[Any], replans: int
) -> dict[str, Any]:
    """Apply the foundation, then time its empty re-plan against SELECT 1; return the samples."""
    raw = load_fixture("foundation_v001.json")
    conn.execute(f"CREATE SCHEMA {FOUNDATION}")
    apply(conn, raw, FOUNDATION)
    schema = prepared_schema(raw, FOUNDATION)

    def replan(on: psycopg.Connection[Any]) -> Plan:
        plan = plan_against(on, schema, FOUNDATION)
        if plan.operations:
            ops = [op.description for op in plan.operations]
            raise SystemExit(f"FAIL: the foundation's re-plan is not empty: {ops}")
        return plan

    live = read_live(conn, schema, FOUNDATION)
    steps: dict[str, Callable[[], object]] = {
        "select 1": lambda: conn.execute("SELECT 1").fetchone(),
        "plan_against": lambda: replan(conn),
        "read_catalog": lambda: read_live(conn, schema, FOUNDATION),
        "make_plan": lambda: make_plan(schema, live, occupied=frozenset()),
        "plan_against prepared": lambda: replan(prepared_conn),
    }
    samples: dict[str, list[float]] = {key: [] for key in steps}
    for i in range(REPLAN_WARMUP + replans):
        for key, func in steps.items():
            _, ms = timed(func)
            if i >= REPLAN_WARMUP:
                samples[key].append(ms)
    return {
        "tables": len(live.tables),
        "columns": sum(len(t.columns) for t in live.tables.values()),
        "queries": count_queries(conn, lambda: replan(conn)),
        "samples": samples,
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def report_large(large: dict[str, Any], runs: int) -> None:
    s = large["samples"]
    print(
        f"1. {large['tables']:,} tables in {LARGE}: {large['columns']:,} columns, "
        f"{large['indexes']:,} indexes, {large['foreign_keys']} foreign keys,\n"
        f"   {large['policies']:,} policies, {large['triggers']:,} triggers; created in "
        f"{large['apply_s']:.1f} s ({TABLES // CHUNK} versions of {CHUNK} tables, untimed).\n"
        f"   Timed payload: the same tables, one column added on {large['changed']} of them\n"
        f"   (prepared in {large['prepare_ms']:,.0f} ms, untimed).\n"
        f"   plan_against sends {large['queries']} queries "
        f"({large['catalog_queries']} of read_catalog, "
        f"{large['queries'] - large['catalog_queries']} of tables_with_rows).\n"
    )
    parts = [
        ("plan_against (whole)", "plan_against", ""),
        ("  read_catalog", "read_catalog", "7 queries, their rows into LiveTable objects"),
        ("  tables_needing_rows", "tables_needing_rows", "a planner pass, no parser check"),
        ("  tables_with_rows", "tables_with_rows", f"{large['needing']} tables probed, 1 query"),
        ("  make_plan", "make_plan", "a planner pass + the parser check"),
        ("    without the check", "make_plan unchecked", "make_plan(check=False)"),
    ]
    print(f"Median and min ms over {runs} runs (after 1 warm-up), connection never prepares")
    print_table(
        ["step", "median ms", "min ms", "what"],
        [[label, median(s[key]), min(s[key]), what] for label, key, what in parts],
    )
    rows: list[list[object]] = []
    for label, count in large["query_rows"].items():
        key = f"query {label}"
        rows.append([label, count, median(s[key]), min(s[key])])
    total = sum(median(s[f"query {label}"]) for label in large["query_rows"])
    rows.append(["all 7", sum(large["query_rows"].values()), total, ""])
    print("read_catalog's queries alone (execute + fetchall, no objects built), ms")
    print_table(["query", "rows", "median ms", "min ms"], rows)


def report_foundation(foundation: dict[str, Any], replans: int) -> None:
    s = foundation["samples"]
    print(
        f"2. foundation_v001 in {FOUNDATION}: {foundation['tables']} tables, "
        f"{foundation['columns']} columns;\n   the re-plan is empty and sends "
        f"{foundation['queries']} queries.\n"
    )
    rows = [
        ("SELECT 1 round trip", "select 1"),
        ("plan_against, no change", "plan_against"),
        ("  read_catalog alone", "read_catalog"),
        ("  make_plan alone", "make_plan"),
        ("plan_against, statements prepared", "plan_against prepared"),
    ]
    print(
        f"Median and min ms over {replans} runs, in turn (after {REPLAN_WARMUP} warm-up); the "
        "last row on a\nconnection where psycopg prepares the statements (its default, "
        "prepare_threshold=5)"
    )
    print_table(
        ["measurement", "median ms", "min ms"],
        [[label, median(s[key]), min(s[key])] for label, key in rows],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of the 1,000-table plan")
    parser.add_argument("--replans", type=int, default=20, help="timed re-plans of the foundation")
    args = parser.parse_args()
    if args.runs < 1 or args.replans < 1:
        parser.error("--runs and --replans must be at least 1")
    with scratch_database("bench_evolution") as dsn:
        print_header(
            "Schema evolution: introspection plus diff, and a no-change re-plan", conninfo=dsn
        )
        with (
            psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn,
            psycopg.connect(dsn, autocommit=True) as prepared_conn,
        ):
            large = large_part(conn, args.runs)
            foundation = foundation_part(conn, prepared_conn, args.replans)
        report_large(large, args.runs)
        report_foundation(foundation, args.replans)
        large_ms = median(large["samples"]["plan_against"])
        replan_ms = median(foundation["samples"]["plan_against"])
        print(f"cpu speed at the end: {python_speed_ms():.1f} ms\n")
        print_table(
            ["target", "median ms", "limit ms", "verdict"],
            [
                [
                    f"1. introspection + diff of {TABLES:,} tables",
                    large_ms,
                    TARGET_LARGE_MS,
                    verdict(large_ms < TARGET_LARGE_MS),
                ],
                [
                    "2. no-change re-plan of the foundation",
                    replan_ms,
                    TARGET_REPLAN_MS,
                    verdict(replan_ms < TARGET_REPLAN_MS),
                ],
            ],
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
