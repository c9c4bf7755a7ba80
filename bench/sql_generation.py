"""SQL generation speed: normalize_schema + render_migration, and the pglast parser check.

Schemas: the foundation fixture (10 tables) and synthetic schemas of 250, 500 and 1,000 tables,
each with 20 caller columns (a mix of types, defaults, NOT NULL, a UNIQUE column, two references
to earlier tables), 3 caller indexes, and every 10th table not tenant-scoped. The builder adds
its default columns (id, tenant_id, created_at, updated_at, deleted_at) and indexes.

Target: 1,000 tables x 20 columns in under 1 s (normalize + render), growing linearly.

What is timed (wall clock, median of N runs; nothing touches a database; the large schemas get
only 5 runs, and prepare() a single one, to keep the whole script short):
- normalize: `normalize_schema(payload)`
- render: `render_migration(schema)` as shipped; note that it calls `check_statements` itself
  before returning, so its time includes one pglast parse of every statement
- check: `check_statements(migration.statements)` alone (the part of render that is the check)
- prepare: `pipeline.prepare(envelope)`, the whole pure-Python part of one request (envelope
  parsing, normalize, render with its check, schema hash), with its plan cache emptied first
  (an identical payload seen again is answered from the cache, see builder/pipeline.py)

Every timed run starts with the builder's caches emptied and a garbage collection (untimed),
so it costs what a first request with that payload costs.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from typing import Any
from unittest import mock

from _common import (
    COLUMNS_PER_TABLE,
    Timing,
    load_fixture,
    measure,
    print_header,
    print_table,
    synthetic_envelope,
    verdict,
)
from pglast.parser import parse_sql_json

import builder.request.fields
import builder.schema.drafts
import builder.schema.names
import builder.schema.normalize
import builder.schema.sqltypes
import builder.sql.render
from builder.pipeline import Prepared, clear_plan_cache, prepare
from builder.schema.normalize import normalize_schema
from builder.sql.check import check_statements
from builder.sql.render import render_migration

SIZES = (250, 500, 1000)
TARGET_MS = 1000.0
TARGET_TABLES = 1000


def repeats(tables: int) -> tuple[int, int]:
    """Return (warmup, repeat) for a schema of `tables` tables.

    The large schemas take up to a second per run, so they get 5 runs and no warm-up of their
    own: the same code paths were already warmed on the smaller schemas (CPython has no JIT).
    """
    if tables <= 10:
        return 5, 50
    if tables <= 250:
        return 1, 5
    return 0, 5


BUILDER_MODULES = (
    builder.schema.names,
    builder.request.fields,
    builder.schema.sqltypes,
    builder.schema.drafts,
    builder.schema.normalize,
    builder.sql.render,
)


def cold_caches() -> None:
    """Empty the builder's caches and collect garbage before a timed run (untimed).

    The builder keeps bounded caches of pure per-name and per-column results and of recent
    plans. Timing the same payload again and again would find them warm; emptied, each run
    costs what a first request with that payload costs.
    """
    for module in BUILDER_MODULES:
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    clear_plan_cache()
    gc.collect()


def libpg_query_parse(statements: tuple[str, ...]) -> None:
    """Parse every statement, then all joined, with libpg_query to JSON (no Python AST objects).

    Not something the builder does: a reference for how much of `check_statements` is the C
    parser itself and how much is building pglast's Python node objects.
    """
    for statement in statements:
        parse_sql_json(statement)
    parse_sql_json(";\n".join(statements))


def main() -> None:
    print_header(
        "SQL generation: normalize_schema + render_migration (+ pglast check)",
        conninfo=None,
        note="(not used: this benchmark is pure Python)",
    )
    cases: list[tuple[str, dict[str, Any]]] = [
        ("foundation_v001", load_fixture("foundation_v001.json"))
    ]
    cases += [(f"synthetic x{n}", synthetic_envelope(n)) for n in SIZES]

    main_rows: list[list[object]] = []
    extra_rows: list[list[object]] = []
    per_table: dict[str, float] = {}
    totals: dict[str, float] = {}
    for label, envelope in cases:
        payload = envelope["payload"]
        warmup, repeat = repeats(len(payload["tables"]))
        schema = normalize_schema(copy.deepcopy(payload))
        migration = render_migration(schema)
        n_tables = len(schema.tables)
        n_columns = sum(len(t.columns) for t in schema.tables)
        caller_columns = sum(len(t["columns"]) for t in payload["tables"])

        def cold(func: Callable[[], object], w: int = warmup, r: int = repeat) -> Timing:
            """Time `func`, every run starting with the builder's caches empty."""
            return measure(func, warmup=w, repeat=r, setup=cold_caches)

        t_norm = cold(lambda p=payload: normalize_schema(p))
        t_render = cold(lambda s=schema: render_migration(s))
        t_check = cold(lambda m=migration: check_statements(m.statements))
        # render_migration with its own internal check_statements replaced by a no-op: the pure
        # text-generation cost.
        with mock.patch.object(builder.sql.render, "check_statements", lambda statements: None):
            t_text = cold(lambda s=schema: render_migration(s))
        t_json = cold(lambda m=migration: libpg_query_parse(m.statements))
        # prepare() is the sum of the steps above (plus hashing); to keep the run short it is
        # timed once for the synthetic schemas.
        prepare_runs = repeat if n_tables <= 10 else 1
        t_prepare = cold(lambda e=envelope: prepare(e), w=0, r=prepare_runs)
        assert isinstance(prepare(envelope), Prepared)

        total = t_norm.median + t_render.median
        totals[label] = total
        per_table[label] = total * 1000 / n_tables
        main_rows.append(
            [
                label,
                n_tables,
                f"{caller_columns:,} ({n_columns:,})",
                len(migration.statements),
                t_norm.median,
                t_render.median,
                total,
                per_table[label],
                t_check.median,
                f"{repeat}",
            ]
        )
        extra_rows.append(
            [
                label,
                t_text.median,
                t_render.median - t_text.median,
                t_check.median,
                t_prepare.median,
                prepare_runs,
                t_json.median,
                f"{len(migration.script) / 1e6:.2f}",
            ]
        )

    print("Per schema, median ms (normalize and render timed separately; total = sum)")
    print_table(
        [
            "schema",
            "tables",
            "columns (with defaults)",
            "statements",
            "normalize ms",
            "render ms",
            "total ms",
            "µs/table",
            "check ms",
            "runs",
        ],
        main_rows,
    )
    print(
        "render ms is render_migration as shipped: it already runs check_statements (pglast) on\n"
        "its statements. check ms is check_statements alone, timed once more on its own.\n"
    )

    print("Where render and a request's preparation go, median ms")
    print_table(
        [
            "schema",
            "render text only",
            "render's own check",
            "check alone",
            "prepare() total",
            "prepare() runs",
            "libpg_query JSON parse",
            "script MB",
        ],
        extra_rows,
    )
    print(
        "render text only: render_migration with its internal check_statements patched out.\n"
        "render's own check: render ms minus render text only.\n"
        "prepare() total: pipeline.prepare(envelope) = envelope + normalize + render (with its\n"
        "check) + schema_hash: the pure-Python part of a request.\n"
        "libpg_query JSON parse: for reference only, the same statements (each, then joined)\n"
        "parsed by pglast.parser.parse_sql_json, i.e. the C parser without pglast's Python AST.\n"
    )

    base_label = f"synthetic x{SIZES[0]}"
    base = per_table[base_label]
    print(f"Linearity: µs per table relative to {base_label} (1.00 = perfectly linear)")
    print_table(
        ["schema", "µs/table", "ratio"],
        [
            [
                f"synthetic x{n}",
                per_table[f"synthetic x{n}"],
                f"{per_table[f'synthetic x{n}'] / base:.2f}",
            ]
            for n in SIZES
        ],
    )

    big = totals[f"synthetic x{TARGET_TABLES}"]
    print(
        f"Target: {TARGET_TABLES:,} tables x {COLUMNS_PER_TABLE} columns, normalize + render "
        f"< {TARGET_MS:,.0f} ms: {big:,.0f} ms -> {verdict(big < TARGET_MS)}"
    )
    ratio = per_table[f"synthetic x{SIZES[-1]}"] / base
    print(
        f"Linear growth (µs/table at x{SIZES[-1]} within 1.25x of x{SIZES[0]}): "
        f"{ratio:.2f}x -> {verdict(ratio <= 1.25)}"
    )


if __name__ == "__main__":
    main()
