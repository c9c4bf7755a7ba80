"""Apply overhead: run_schema_builder versus executing the same DDL script directly.

The foundation fixture (10 tables) is applied to an empty target, a fresh PostgreSQL schema per
run, in a scratch database:

- builder: `run_schema_builder(envelope, conn, settings=ApplySettings(target_schema=...))`, end
  to end: envelope parsing, normalize, render (with its pglast check: of the first eighth of
  the statements up front, of the rest while those run), ledger creation, advisory lock, SET
  LOCAL timeouts, ledger lookup, catalog snapshot, the script, the ledger row, the output
  envelope.
- direct: the SAME `migration.script` text (rendered beforehand for that schema, untimed)
  executed with psycopg in one transaction: `with conn.transaction(): conn.execute(script)`.

Both get a freshly created, empty schema (created untimed before the run, dropped untimed
after), on the same autocommit connection, in alternating order. For the breakdown, the
builder's planning (`builder.service._prepare`, the pure-Python part, during which the lock-free
ledger read runs on another thread) and `apply_attempt()` (the database part) are wrapped with a
stopwatch during the same runs, and the script's own time is read from the
ledger row (`execution_ms`, which the builder measures around executing the script).

Target (issue): the builder within 1.5x of executing the script directly.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

import psycopg
from _common import (
    load_fixture,
    print_header,
    print_table,
    scratch_database,
    timed,
    verdict,
)
from psycopg import sql

from builder import apply as applying
from builder import service
from builder.ddl import render_migration
from builder.normalize import normalize_schema
from builder.service import run_schema_builder

WARMUP = 3
REPEAT = 21
TARGET_RATIO = 1.5


def fresh_schema(conn: psycopg.Connection[Any], kind: str) -> str:
    name = f"bench_{kind}_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return name


def drop_schema(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


class Stopwatch:
    """Wrap a function and record how long its last call took (ms)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.last_ms = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result, self.last_ms = timed(lambda: self.func(*args, **kwargs))
        return result


def run_builder(conn: psycopg.Connection[Any], envelope: dict[str, Any]) -> dict[str, float]:
    """Time one run_schema_builder and, inside the same run, prepare, apply_attempt, the script."""
    target = fresh_schema(conn, "b")
    prepare_watch = Stopwatch(service._prepare)
    apply_watch = Stopwatch(applying.apply_attempt)
    try:
        settings = applying.ApplySettings(target_schema=target)
        # A first apply plans its payload: no plan cached by an earlier run (each run's target
        # schema is new anyway, and the cache is per target schema).
        service.clear_plan_cache()
        with (
            mock.patch.object(service, "_prepare", prepare_watch),
            mock.patch.object(applying, "apply_attempt", apply_watch),
        ):
            outcome, total = timed(lambda: run_schema_builder(envelope, conn, settings=settings))
        assert outcome.status == "applied", outcome.response
        row = conn.execute(
            sql.SQL("SELECT execution_ms FROM {}").format(
                sql.Identifier(target, "schema_migrations")
            )
        ).fetchone()
        assert row is not None
        script = float(row[0])
        return {
            "builder": total,
            "prepare": prepare_watch.last_ms,
            "attempt": apply_watch.last_ms,
            "script": script,
            "db_extras": apply_watch.last_ms - script,
            "rest": total - prepare_watch.last_ms - apply_watch.last_ms,
        }
    finally:
        drop_schema(conn, target)


def run_direct(conn: psycopg.Connection[Any], payload: dict[str, Any]) -> float:
    """Return ms of executing the rendered script in one transaction (rendered untimed)."""
    target = fresh_schema(conn, "d")
    try:
        script = render_migration(normalize_schema(payload), target_schema=target).script

        def execute() -> None:
            with conn.transaction():
                conn.execute(script.encode())

        _, ms = timed(execute)
        return ms
    finally:
        drop_schema(conn, target)


def main() -> None:
    envelope = load_fixture("foundation_v001.json")
    payload = envelope["payload"]
    with scratch_database() as dsn:
        print_header("Apply overhead: run_schema_builder vs the same script directly", conninfo=dsn)
        migration = render_migration(normalize_schema(payload))
        print(
            f"fixture: foundation_v001.json, {len(payload['tables'])} tables, "
            f"{len(migration.statements)} statements, script {len(migration.script):,} bytes;\n"
            f"{WARMUP} warm-up + {REPEAT} timed runs of each variant, a fresh empty schema each\n"
        )
        samples: dict[str, list[float]] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(WARMUP + REPEAT):
                # Alternate the order so that neither variant always runs first.
                if i % 2 == 0:
                    results = run_builder(conn, envelope)
                    results["direct"] = run_direct(conn, payload)
                else:
                    direct_ms = run_direct(conn, payload)
                    results = run_builder(conn, envelope)
                    results["direct"] = direct_ms
                if i >= WARMUP:
                    for key, value in results.items():
                        samples.setdefault(key, []).append(value)

    med = {k: statistics.median(v) for k, v in samples.items()}
    low = {k: min(v) for k, v in samples.items()}
    direct = med["direct"]

    def row(label: str, key: str) -> list[object]:
        return [label, med[key], low[key], f"{med[key] / direct:.2f}x"]

    print(f"Median and min ms over {REPEAT} runs (steps timed inside the same builder runs)")
    print_table(
        ["variant / step", "median ms", "min ms", "vs direct"],
        [
            row("run_schema_builder, end to end", "builder"),
            row("  planning: normalize, render, check of the first 1/8, hash", "prepare"),
            row("  apply_attempt(): the database part", "attempt"),
            row("    the script itself (ledger execution_ms, whole ms)", "script"),
            row("    ledger ensure, lock, timeouts, lookup, catalog, ledger row", "db_extras"),
            row("  rest: envelope parsing, output envelope, hashes", "rest"),
            row("direct: same script text, one transaction", "direct"),
        ],
    )
    print("Steps are medians of their own samples, so they need not add up exactly to the total.\n")
    ratio = med["builder"] / direct
    print(
        f"builder overhead: {med['builder'] - direct:.1f} ms per apply (medians); "
        f"apply_attempt() alone vs direct: {med['attempt'] / direct:.2f}x"
    )
    print(
        f"Target: builder within {TARGET_RATIO}x of direct: {ratio:.2f}x -> "
        f"{verdict(ratio <= TARGET_RATIO)}"
    )


if __name__ == "__main__":
    main()
