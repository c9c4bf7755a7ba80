"""Shared helpers of the bench/*.py scripts: scratch database, timing, plain-text tables.

Importing this module puts the project root on `sys.path`, so a script runs alone
(`.venv/bin/python bench/<name>.py`) as well as under `make bench` (which sets PYTHONPATH).

The server is the one named by `DATABASE_URL` (what `make bench` sets), or else the PostgreSQL
service at `postgresql://postgres@127.0.0.1:5432/postgres`. Scripts never touch existing
databases: each creates a scratch database `bench_<random>` and drops it in a `finally`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FIXTURES = ROOT / "tests" / "fixtures"


def server_url() -> str:
    """Return the conninfo of the server to benchmark on (DATABASE_URL or the 5432 service)."""
    return os.environ.get("DATABASE_URL") or DEFAULT_URL


def with_dbname(conninfo: str, dbname: str) -> str:
    """Return `conninfo` (URL or key=value) pointing at the database `dbname` instead."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


def describe_server(conninfo: str) -> str:
    """Return where `conninfo` points (host or socket directory, port), without secrets."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    host = params.get("host") or "(default socket)"
    return f"{host}:{params.get('port') or 5432}"


@contextmanager
def scratch_database(prefix: str = "bench") -> Iterator[str]:
    """Create a database with a unique name on the bench server; yield its conninfo; drop it."""
    admin_url = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        print(f"(scratch database {name} dropped)")


def server_version(conninfo: str) -> str:
    """Return the server's `version()` string, or why it could not be read."""
    try:
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            row = conn.execute("SELECT version()").fetchone()
    except psycopg.Error as exc:
        return f"unavailable ({str(exc).strip().splitlines()[0]})"
    assert row is not None
    return str(row[0])


def print_header(title: str, *, conninfo: str | None, note: str = "") -> None:
    """Print the title, date, machine, Python and PostgreSQL versions."""
    import pglast

    target = conninfo or server_url()
    version = server_version(target)
    print(title)
    print("=" * len(title))
    print(f"date (UTC):  {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine:     {platform.machine()}, nproc={cores}, {platform.system()}")
    print(
        f"python:      {platform.python_version()}; psycopg {psycopg.__version__}; "
        f"pglast {pglast.__version__}"
    )
    print(f"postgresql:  {version}")
    print(f"server:      {describe_server(target)}{' ' + note if note else ''}")
    print(
        f"cpu speed:   {python_speed_ms():.1f} ms for a fixed pure-Python loop (best of 5; a "
        "shared VM's speed\n             varies from day to day: compare runs by it)"
    )
    print()


def python_speed_ms() -> float:
    """Time a fixed pure-Python workload (best of 5, ms): a yardstick for the machine's speed.

    A shared machine's speed at Python varies, up to about 2x; a benchmark's numbers are only
    comparable across runs together with this one.
    """
    import timeit

    return 1000 * min(timeit.repeat("sum(i * i for i in range(100_000))", number=1, repeat=5))


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one measurement, in milliseconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)


def measure(
    func: Callable[[], object],
    *,
    repeat: int,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
) -> Timing:
    """Call `func` `warmup` times untimed, then `repeat` times timed; `setup` runs untimed."""
    samples = []
    for i in range(warmup + repeat):
        if setup is not None:
            setup()
        started = time.perf_counter()
        func()
        elapsed = (time.perf_counter() - started) * 1000
        if i >= warmup:
            samples.append(elapsed)
    return Timing(tuple(samples))


def timed(func: Callable[[], Any]) -> tuple[Any, float]:
    """Return `(func(), milliseconds)`."""
    started = time.perf_counter()
    result = func()
    return result, (time.perf_counter() - started) * 1000


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows under headers: text left-aligned, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(headers))
    ]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    print()


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def load_fixture(name: str) -> dict[str, Any]:
    """Return a request envelope from tests/fixtures."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


if __name__ == "__main__":
    print("bench/_common.py holds helpers for the other bench scripts; nothing to measure.")


COLUMNS_PER_TABLE = 20


def synthetic_table(i: int) -> dict[str, Any]:
    """Return table `i`: 20 columns of mixed types, 3 indexes, references to earlier tables."""
    columns: list[dict[str, Any]] = [
        {"name": "name", "type": "TEXT", "not_null": True},
        {"name": "code", "type": "VARCHAR(64)", "unique": True},
        {"name": "amount", "type": "NUMERIC(12,2)", "default": 0},
        {"name": "quantity", "type": "INTEGER", "not_null": True, "default": 0},
        {"name": "big_counter", "type": "BIGINT"},
        {"name": "isActive", "type": "BOOLEAN", "not_null": True, "default": True},
        {"name": "born_on", "type": "DATE"},
        {"name": "seen_at", "type": "TIMESTAMPTZ", "default": "now()"},
        {"name": "attributes", "type": "JSONB", "default": "'{}'"},
        {"name": "tags", "type": "TEXT[]"},
        {"name": "ratio", "type": "DOUBLE PRECISION"},
        {"name": "score", "type": "REAL"},
        {"name": "notes", "type": "TEXT"},
        {"name": "client_ip", "type": "INET"},
        {"name": "prev_id", "type": "UUID"},
        {"name": "half_id", "type": "UUID"},
        {"name": "external_id", "type": "UUID"},
        {"name": "duration", "type": "INTERVAL"},
        {"name": "status", "type": "TEXT", "not_null": True, "default": "'new'"},
        {"name": "payload", "type": "BYTEA"},
    ]
    assert len(columns) == COLUMNS_PER_TABLE
    tenant_scoped = i % 10 != 9
    # The builder refuses a reference from a global table into a tenant's rows: a global table
    # references the global tables before it (the first one references none).
    refs: tuple[int, ...] = ()
    if tenant_scoped and i > 0:
        refs = (i - 1, i // 2)
    elif not tenant_scoped and i >= 19:
        refs = (i - 10, 10 * (i // 20) + 9)
    if refs:
        columns[14]["references"] = {"table": f"entity_{refs[0]:04d}"}
        columns[15]["references"] = {"table": f"entity_{refs[1]:04d}", "on_delete": "SET NULL"}
    return {
        "name": f"entity_{i:04d}",
        "tenant_scoped": tenant_scoped,
        "columns": columns,
        "indexes": [
            {"columns": ["name"]},
            {"columns": ["status", "seen_at"]},
            {"columns": ["prev_id"]},
        ],
    }


def synthetic_envelope(tables: int) -> dict[str, Any]:
    return {
        "meta": {"tenant_id": "t_bench"},
        "payload": {
            "schema_version": f"bench{tables}",
            "description": f"synthetic benchmark schema, {tables} tables",
            "tables": [synthetic_table(i) for i in range(tables)],
        },
    }
