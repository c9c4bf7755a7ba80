"""Row level security cost: the builder's tenant policy versus the reference note's policy.

Two identical `patients` tables are created by the builder (run_schema_builder) in two schemas of
a scratch database, `gen` and `ref`. In `ref` the generated policy is dropped and replaced by the
reference note's:

    USING (tenant_id::text = current_setting('app.current_tenant_id', true))

The builder's (as rendered by builder/sql/render.py, unchanged) is

    USING (tenant_id = (SELECT nullif(current_setting('app.current_tenant_id', true), '')::uuid))

1,000,000 rows over 200 tenants (pseudo-random, so each tenant's rows are spread over the whole
table, as when many tenants write at the same time) are loaded with INSERT ... SELECT
generate_series into `gen`, copied to `ref`, then `VACUUM (ANALYZE)` both: the statistics plus
the visibility map that autovacuum would set on its own shortly after such a load (done
explicitly so that it does not run in the middle of the measurement).

Queries run as a NOLOGIN role that does not own the tables (granted SELECT; SET ROLE), with
`app.current_tenant_id` set, for a sample of tenants, each 20 times after a warm-up, alternating
the two tables:

- `SELECT count(*) FROM patients`
- `SELECT * FROM patients LIMIT 1000` (all rows fetched by the client)

Timed two ways: on the client (execute + fetchall, what the application sees, including
transferring and decoding the rows) and on the server (EXPLAIN (ANALYZE, TIMING OFF) Execution
Time). The plan of each query (first sampled tenant) shows whether the tenant predicate is an
index condition or a filter on every row read.

Target: the generated policy is served by an index and is 20x faster or more. The
verdict uses the client timings; the server-side speedup is printed next to it.
"""

from __future__ import annotations

import json
import statistics
import uuid
from typing import Any

import psycopg
from _common import (
    print_header,
    print_table,
    scratch_database,
    server_url,
    timed,
    verdict,
)
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import run_schema_builder
from builder.schema.names import policy_name

ROWS = 1_000_000
TENANTS = 200
SAMPLE_TENANTS = (0, 37, 101, 150, 199)
WARMUP = 2
RUNS = 20
TARGET_SPEEDUP = 20.0
SERVER_RUNS = 5

PATIENTS = {
    "name": "patients",
    "columns": [
        {"name": "first_name", "type": "TEXT", "not_null": True},
        {"name": "last_name", "type": "TEXT", "not_null": True},
        {"name": "phone", "type": "TEXT"},
        {"name": "date_of_birth", "type": "DATE"},
    ],
    "indexes": [{"name": "idx_patients_phone", "columns": ["phone"]}],
}
REFERENCE_PREDICATE = "tenant_id::text = current_setting('app.current_tenant_id', true)"
QUERIES = {
    "count(*)": "SELECT count(*) FROM {table}",
    "SELECT * LIMIT 1000": "SELECT * FROM {table} LIMIT 1000",
}


def tenant_uuid(k: int) -> str:
    return f"00000000-0000-4000-8000-{k:012d}"


def create_tables(conn: psycopg.Connection[Any]) -> None:
    envelope = {
        "payload": {
            "schema_version": "001",
            "description": "tenant policy benchmark",
            "tables": [PATIENTS],
        }
    }
    for target in ("gen", "ref"):
        outcome = run_schema_builder(envelope, conn, settings=ApplySettings(target_schema=target))
        assert outcome.status == "applied", outcome.response
    conn.execute(
        sql.SQL("DROP POLICY {} ON ref.patients").format(sql.Identifier(policy_name("patients")))
    )
    conn.execute(
        sql.SQL("CREATE POLICY {} ON ref.patients USING ({})").format(
            sql.Identifier("patients_reference_note_policy"), sql.SQL(REFERENCE_PREDICATE)
        )
    )


def load_rows(conn: psycopg.Connection[Any]) -> tuple[float, float]:
    """Load ROWS rows into gen.patients and copy them to ref.patients; return (load, vacuum) s."""
    conn.execute("SELECT setseed(0.42)")
    _, load_ms = timed(
        lambda: conn.execute(
            """
            INSERT INTO gen.patients
                (tenant_id, first_name, last_name, phone, date_of_birth, created_at, updated_at)
            SELECT ('00000000-0000-4000-8000-' || lpad(t::text, 12, '0'))::uuid,
                   'first_' || g, 'last_' || (g %% 5000), '+1555' || lpad(g::text, 7, '0'),
                   date '1940-01-01' + (g %% 25000),
                   timestamptz '2025-01-01' + g * interval '10 seconds',
                   timestamptz '2025-01-01' + g * interval '10 seconds'
            FROM (SELECT g, floor(random() * %s)::int AS t FROM generate_series(1, %s) g) s
            """,
            [TENANTS, ROWS],
        )
    )
    _, copy_ms = timed(
        lambda: conn.execute("INSERT INTO ref.patients SELECT * FROM gen.patients ORDER BY ctid")
    )
    _, vacuum_ms = timed(
        lambda: (
            conn.execute("VACUUM (ANALYZE) gen.patients"),
            conn.execute("VACUUM (ANALYZE) ref.patients"),
        )
    )
    return (load_ms + copy_ms) / 1000, vacuum_ms / 1000


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def node_name(node: dict[str, Any]) -> str:
    name = str(node["Node Type"])
    if node.get("Partial Mode") and node["Partial Mode"] != "Simple":
        name = f"{node['Partial Mode']} {name}"
    if node.get("Parallel Aware"):
        name = f"Parallel {name}"
    if "Index Name" in node:
        name += f" using {node['Index Name']}"
    return name


def scan_path(plan: dict[str, Any]) -> str:
    """Return the top node down to the scan node, e.g. `Aggregate > Index Only Scan using ...`."""
    parts = [node_name(plan)]
    node = plan
    while node.get("Plans"):
        # Follow the outer side; the tenant sub-select of the policy is an InitPlan.
        children = [p for p in node["Plans"] if p.get("Parent Relationship") != "InitPlan"]
        if not children:
            break
        node = children[0]
        parts.append(node_name(node))
    return " > ".join(parts)


def tenant_predicate(plan: dict[str, Any]) -> tuple[str, bool]:
    """Return how the plan applies the tenant predicate, and whether an index condition does."""
    for node in _nodes(plan):
        if "tenant_id" in node.get("Index Cond", ""):
            return f"Index Cond {node['Index Cond']}", True
    for node in _nodes(plan):
        if "tenant_id" in node.get("Filter", ""):
            return "Filter on every row read", False
    return "not found in plan", False


def main() -> None:
    role = f"bench_reader_{uuid.uuid4().hex[:8]}"
    try:
        with scratch_database() as dsn:
            run(dsn, role)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def run(dsn: str, role: str) -> None:
    print_header("Tenant policy: generated RLS policy vs the reference note's", conninfo=dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_tables(conn)
        load_s, vacuum_s = load_rows(conn)
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA gen, ref TO {}").format(ident))
        conn.execute(sql.SQL("GRANT SELECT ON gen.patients, ref.patients TO {}").format(ident))
        size = conn.execute("SELECT pg_size_pretty(pg_table_size('gen.patients'))").fetchone()
        policies = conn.execute(
            "SELECT schemaname, policyname, qual FROM pg_policies "
            "WHERE tablename = 'patients' ORDER BY schemaname"
        ).fetchall()
        expected = dict(
            conn.execute("SELECT tenant_id::text, count(*) FROM gen.patients GROUP BY 1").fetchall()
        )
    assert size is not None
    print(
        f"{ROWS:,} rows, {TENANTS} tenants ({ROWS // TENANTS:,} rows each on average), table "
        f"{size[0]} heap; loaded in {load_s:.1f} s (both tables), VACUUM (ANALYZE) {vacuum_s:.1f} s"
    )
    for schema, name, qual in policies:
        print(f"  {schema}.patients policy {name}: USING {qual}")
    print(
        f"As role {role} (NOLOGIN, SELECT only, not the owner); tenants sampled: "
        f"{len(SAMPLE_TENANTS)}; {WARMUP} warm-up + {RUNS} timed runs per tenant, query, table\n"
    )

    samples: dict[tuple[str, str], list[float]] = {}
    server: dict[tuple[str, str], list[float]] = {}
    plans: dict[tuple[str, str], dict[str, Any]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        for k in SAMPLE_TENANTS:
            tenant = tenant_uuid(k)
            conn.execute("SELECT set_config('app.current_tenant_id', %s, false)", [tenant])
            for label, template in QUERIES.items():
                queries = {
                    schema: sql.SQL(template).format(table=sql.Identifier(schema, "patients"))
                    for schema in ("gen", "ref")
                }
                for schema, query in queries.items():
                    check_result(conn, query, label, schema, tenant, expected[tenant])
                    if k == SAMPLE_TENANTS[0]:
                        plans[label, schema] = explain(conn, query, analyze=False)
                for i in range(WARMUP + RUNS):
                    order = ("gen", "ref") if i % 2 == 0 else ("ref", "gen")
                    for schema in order:
                        query = queries[schema]
                        _, ms = timed(lambda q=query: conn.execute(q).fetchall())
                        if i >= WARMUP:
                            samples.setdefault((label, schema), []).append(ms)
                for _ in range(SERVER_RUNS):
                    for schema, query in queries.items():
                        analyzed = explain(conn, query, analyze=True)
                        server.setdefault((label, schema), []).append(analyzed["Execution Time"])
        conn.execute("RESET ROLE")
    report(samples, server, plans)


def check_result(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    label: str,
    schema: str,
    tenant: str,
    expected: int,
) -> None:
    """Check that the role sees exactly the tenant's rows through either policy."""
    rows = conn.execute(query).fetchall()
    if label == "count(*)":
        assert rows[0][0] == expected, (schema, tenant, rows[0][0], expected)
    else:
        assert len(rows) == min(1000, expected), (schema, tenant, len(rows))
        assert all(str(r[1]) == tenant for r in rows), (schema, tenant)


def explain(conn: psycopg.Connection[Any], query: sql.Composable, *, analyze: bool) -> Any:
    """Return the plan (analyze=False) or the whole EXPLAIN ANALYZE result (analyze=True)."""
    options = "ANALYZE, TIMING OFF, FORMAT JSON" if analyze else "FORMAT JSON"
    row = conn.execute(sql.SQL(f"EXPLAIN ({options}) ") + query).fetchone()
    assert row is not None
    result = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return result[0] if analyze else result[0]["Plan"]


def report(
    samples: dict[tuple[str, str], list[float]],
    server: dict[tuple[str, str], list[float]],
    plans: dict[tuple[str, str], dict[str, Any]],
) -> None:
    med = {key: statistics.median(values) for key, values in samples.items()}
    rows_out: list[list[object]] = []
    for label in QUERIES:
        speedup = med[label, "ref"] / med[label, "gen"]
        server_speedup = statistics.median(server[label, "ref"]) / statistics.median(
            server[label, "gen"]
        )
        for schema, name in (("gen", "generated"), ("ref", "reference note")):
            rows_out.append(
                [
                    label,
                    name,
                    med[label, schema],
                    min(samples[label, schema]),
                    f"{speedup:.1f}x" if schema == "gen" else "",
                    statistics.median(server[label, schema]),
                    f"{server_speedup:.1f}x" if schema == "gen" else "",
                ]
            )
    print(
        f"Client ms: wall clock of execute + fetchall, median and min over "
        f"{len(SAMPLE_TENANTS)} tenants x {RUNS} runs.\n"
        f"Server ms: EXPLAIN (ANALYZE, TIMING OFF) Execution Time, median of "
        f"{len(SAMPLE_TENANTS)} tenants x {SERVER_RUNS} runs (no rows sent to the client)."
    )
    print_table(
        [
            "query",
            "policy",
            "client median ms",
            "client min ms",
            "speedup",
            "server median ms",
            "speedup",
        ],
        rows_out,
    )
    print(f"Plans (tenant {tenant_uuid(SAMPLE_TENANTS[0])}):")
    for label in QUERIES:
        for schema, name in (("gen", "generated"), ("ref", "reference note")):
            how, _ = tenant_predicate(plans[label, schema])
            print(f"  {label:<20} {name:<15} {scan_path(plans[label, schema])}")
            print(f"  {'':<20} {'':<15} tenant predicate: {how}")
    print()
    all_ok = True
    for label in QUERIES:
        _, indexed = tenant_predicate(plans[label, "gen"])
        speedup = med[label, "ref"] / med[label, "gen"]
        server_speedup = statistics.median(server[label, "ref"]) / statistics.median(
            server[label, "gen"]
        )
        ok = indexed and speedup >= TARGET_SPEEDUP
        all_ok = all_ok and ok
        print(
            f"Target {label}: served by an index condition: {'yes' if indexed else 'NO'}; "
            f">= {TARGET_SPEEDUP:.0f}x faster: client {speedup:.1f}x -> {verdict(ok)} "
            f"(server side {server_speedup:.1f}x -> "
            f"{verdict(indexed and server_speedup >= TARGET_SPEEDUP)})"
        )
    print(f"Overall (client-side timings): {verdict(all_ok)}")


if __name__ == "__main__":
    main()
