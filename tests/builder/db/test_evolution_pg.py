"""Schema evolution against a real PostgreSQL target: versions over rows, risk gates, concurrent
indexes, verification and drift."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.evolve.verify import verify_database
from builder.pipeline import plan_against, prepare, run_schema_builder
from tests.builder.db.test_apply_pg import index_validity
from tests.builder.helpers import PATIENTS, envelope, load_fixture

TENANT = "00000000-0000-0000-0000-00000000000a"


def apply(conn: psycopg.Connection, schema: str, request: dict[str, Any]) -> Any:
    return run_schema_builder(request, conn, settings=ApplySettings(target_schema=schema))


def rows_of(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(schema, table))
    ).fetchall()


def shape(conn: psycopg.Connection, schema: str) -> dict[str, Any]:
    """Columns (type, nullability, default), indexes and constraints of every table."""
    columns = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 2",
        [schema],
    ).fetchall()
    indexes = conn.execute(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1, 2",
        [schema],
    ).fetchall()
    constraints = conn.execute(
        "SELECT conrelid::regclass::text, conname, convalidated FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s ORDER BY 1, 2",
        [schema],
    ).fetchall()
    return {"columns": columns, "indexes": indexes, "constraints": constraints}


def ledger(conn: psycopg.Connection, schema: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL("SELECT version, status, metadata FROM {} ORDER BY applied_at").format(
            sql.Identifier(schema, "schema_migrations")
        )
    ).fetchall()


def insert_patient(conn: psycopg.Connection, schema: str, mrn: str) -> Any:
    return conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name, mrn) "
            "VALUES (%s, 'Ada', 'Lovelace', %s) RETURNING id"
        ).format(sql.Identifier(schema, "patients")),
        [TENANT, mrn],
    ).fetchone()[0]


# --- version after version over rows ---------------------------------------------------------


def test_the_foundation_evolves_over_rows_and_nothing_is_lost(target_conn, target_schema):
    v1 = apply(target_conn, target_schema, load_fixture("foundation_v001.json"))
    assert v1.status == "applied", v1.response
    assert v1.response["result"]["primary_outputs"]["verification"]["ok"] is True
    patient = insert_patient(target_conn, target_schema, "MRN-1")
    insert_patient(target_conn, target_schema, "MRN-2")
    target_conn.execute(
        sql.SQL("INSERT INTO {} (tenant_id, patient_id, starts_at) VALUES (%s, %s, now())").format(
            sql.Identifier(target_schema, "appointments")
        ),
        [TENANT, patient],
    )
    before = {t: rows_of(target_conn, target_schema, t) for t in ("patients", "appointments")}

    v2 = apply(target_conn, target_schema, load_fixture("foundation_v002.json"))

    assert v2.status == "applied", v2.response
    outputs = v2.response["result"]["primary_outputs"]
    assert outputs["verification"] == {"ok": True, "differences": []}
    actions = {(step["action"], step["subject"]) for step in outputs["plan"]}
    assert ("add_column", "email") in actions
    assert ("create_table", "insurance_policies") in actions
    # The ALTER statements are in the plan, the concurrent build after COMMIT.
    in_transaction = [s for step in outputs["plan"] for s in step["sql"]]
    after_commit = [s for step in outputs["plan"] for s in step["after_commit"]]
    assert f'ALTER TABLE "{target_schema}"."patients" ADD COLUMN IF NOT EXISTS "email" TEXT' in (
        in_transaction
    )
    assert [s.split(" (")[0] for s in after_commit] == [
        f'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "idx_patients_mrn" ON "{target_schema}"'
        '."patients"',
        f'ALTER TABLE "{target_schema}"."appointments" VALIDATE CONSTRAINT '
        '"appointments_patient_id_fkey"',
    ]
    assert [(s["sql"], s["status"]) for s in outputs["steps"]] == [(s, "ran") for s in after_commit]
    # Every row is still there, with a NULL in the new column.
    after_patients = rows_of(target_conn, target_schema, "patients")
    assert len(after_patients) == 2
    assert [r[: len(before["patients"][0])] for r in after_patients] == before["patients"]
    assert rows_of(target_conn, target_schema, "appointments") == before["appointments"]
    email = target_conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE email IS NULL").format(
            sql.Identifier(target_schema, "patients")
        )
    ).fetchone()[0]
    assert email == 2
    # The foreign key that v002 changes (on delete cascade) is in place and validated.
    foreign_key = target_conn.execute(
        "SELECT confdeltype, convalidated FROM pg_constraint WHERE conrelid = %s::regclass "
        "AND conname = 'appointments_patient_id_fkey'",
        [f'"{target_schema}".appointments'],
    ).fetchall()
    assert foreign_key == [("c", True)]
    # The ledger keeps the normalized schema of each version.
    recorded = ledger(target_conn, target_schema)
    assert [(r[0], r[1]) for r in recorded] == [("001", "success"), ("002", "success")]
    assert {t["name"] for t in recorded[1][2]["schema"]["tables"]} >= {"insurance_policies"}
    assert recorded[1][2]["verification"]["ok"] is True

    # v003 lists one new table that references v001's tables only.
    referrals = {
        "name": "referrals",
        "columns": [
            {
                "name": "patient_id",
                "type": "UUID",
                "not_null": True,
                "references": {"table": "patients"},
            },
            {"name": "provider_id", "type": "UUID", "references": {"table": "providers"}},
            {"name": "reason", "type": "TEXT"},
        ],
    }
    v3 = apply(target_conn, target_schema, envelope([referrals], version="003"))

    assert v3.status == "applied", v3.response
    outputs = v3.response["result"]["primary_outputs"]
    assert outputs["verification"]["ok"] is True
    assert {step["table"] for step in outputs["plan"]} <= {"", "referrals"}
    assert verify_database(target_conn, target_schema).ok


def test_a_schema_applied_then_planned_again_has_an_empty_plan(target_conn, target_schema):
    for name in ("foundation_v001.json", "foundation_v002.json"):
        assert apply(target_conn, target_schema, load_fixture(name)).status == "applied"
        prepared = prepare(load_fixture(name), target_schema=target_schema)
        plan = plan_against(target_conn, prepared.schema, target_schema)
        if name.endswith("001.json"):
            # v002 changes tables of v001; v001 against its own database changes nothing.
            assert plan.operations == ()
    prepared = prepare(load_fixture("foundation_v002.json"), target_schema=target_schema)
    assert plan_against(target_conn, prepared.schema, target_schema).operations == ()


# --- risky changes: held or blocked as the profile says, the database unchanged ---------------

DROPPED_PHONE = {
    **PATIENTS,
    "columns": [c for c in PATIENTS["columns"] if c["name"] != "phone"],
    "indexes": [],
    "drop_columns": ["phone"],
    "drop_indexes": ["idx_patients_phone"],
}
INTEGER_MRN = {
    **PATIENTS,
    "columns": [{**c, "type": "INTEGER"} if c["name"] == "mrn" else c for c in PATIENTS["columns"]],
}
REQUIRED_SSN = {
    **PATIENTS,
    "columns": [*PATIENTS["columns"], {"name": "ssn", "type": "TEXT", "not_null": True}],
}

HELD, BLOCKED, APPLIED = "pending_approval", "blocked", "applied"
CASES = [
    # change, profile, allow_destructive, expected status
    (DROPPED_PHONE, "safe", False, BLOCKED),
    (DROPPED_PHONE, "safe", True, HELD),
    (DROPPED_PHONE, "review", False, HELD),
    (DROPPED_PHONE, "permissive", False, HELD),
    (DROPPED_PHONE, "permissive", True, HELD),
    (INTEGER_MRN, "safe", False, HELD),
    (INTEGER_MRN, "review", False, HELD),
    (REQUIRED_SSN, "safe", False, BLOCKED),
    (REQUIRED_SSN, "review", False, BLOCKED),
    (REQUIRED_SSN, "permissive", True, BLOCKED),
]


@pytest.mark.parametrize(("change", "profile", "allow_destructive", "expected"), CASES)
def test_a_risky_change_is_held_or_blocked_and_changes_nothing(
    target_conn, target_schema, change, profile, allow_destructive, expected
):
    assert apply(target_conn, target_schema, envelope([PATIENTS])).status == "applied"
    insert_patient(target_conn, target_schema, "12")
    before = shape(target_conn, target_schema), rows_of(target_conn, target_schema, "patients")
    request = envelope([change], version="002")
    request["context"]["validation_profile"] = profile
    if allow_destructive:
        request["payload"]["allow_destructive"] = True

    outcome = apply(target_conn, target_schema, request)

    assert outcome.status == expected, outcome.response["result"]["summary"]
    result = outcome.response["result"]
    assert "nothing was executed" in result["summary"]
    assert result["primary_outputs"]["plan"], "the plan is shown"
    if expected == BLOCKED:
        assert outcome.http_status == 400 and result["validation_errors"]
    else:
        assert outcome.http_status == 202
    after = shape(target_conn, target_schema), rows_of(target_conn, target_schema, "patients")
    assert after == before
    assert [r[0] for r in ledger(target_conn, target_schema)] == ["001"]


def test_the_permissive_profile_applies_a_type_change_and_says_so(target_conn, target_schema):
    assert apply(target_conn, target_schema, envelope([PATIENTS])).status == "applied"
    insert_patient(target_conn, target_schema, "12")
    request = envelope([INTEGER_MRN], version="002")
    request["context"]["validation_profile"] = "permissive"

    outcome = apply(target_conn, target_schema, request)

    assert outcome.status == "applied", outcome.response
    outputs = outcome.response["result"]["primary_outputs"]
    assert outputs["risk"]["level"] == "review"
    assert any(
        w.startswith("Applied without review (changing-column-type)") for w in outputs["warnings"]
    )
    assert outputs["verification"]["ok"] is True
    mrn = target_conn.execute(
        sql.SQL("SELECT mrn FROM {}").format(sql.Identifier(target_schema, "patients"))
    ).fetchone()[0]
    assert mrn == 12


def test_setting_not_null_is_checked_not_valid_first(target_conn, target_schema):
    assert apply(target_conn, target_schema, envelope([PATIENTS])).status == "applied"
    insert_patient(target_conn, target_schema, "MRN-1")
    required_mrn = {
        **PATIENTS,
        "columns": [
            {**c, "not_null": True} if c["name"] == "mrn" else c for c in PATIENTS["columns"]
        ],
    }
    request = envelope([required_mrn], version="002")
    request["context"]["validation_profile"] = "permissive"

    outcome = apply(target_conn, target_schema, request)

    assert outcome.status == "applied", outcome.response
    [step] = outcome.response["result"]["primary_outputs"]["plan"]
    statements = step["sql"] + step["after_commit"]
    assert [s.split(" ", 1)[0] for s in statements] == ["ALTER"] * 4
    assert "NOT VALID" in statements[0] and "VALIDATE CONSTRAINT" in statements[1]
    assert "SET NOT NULL" in statements[2] and "DROP CONSTRAINT" in statements[3]
    nullable = target_conn.execute(
        "SELECT is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'patients' AND column_name = 'mrn'",
        [target_schema],
    ).fetchone()[0]
    assert nullable == "NO"


# --- an index on a table with rows: built concurrently, writes go on -------------------------


def test_an_index_on_a_table_with_rows_is_built_while_another_connection_writes(
    target_conn, target_dsn, target_schema
):
    assert apply(target_conn, target_schema, envelope([PATIENTS])).status == "applied"
    insert_patient(target_conn, target_schema, "MRN-0")
    with_mrn_index = {**PATIENTS, "indexes": [*PATIENTS["indexes"], {"columns": ["mrn"]}]}
    outcomes: list[Any] = []
    with (
        psycopg.connect(target_dsn) as open_writer,
        psycopg.connect(target_dsn, autocommit=True) as writer,
    ):
        # A writer's open transaction: CREATE INDEX CONCURRENTLY waits for it to end, so the
        # build is caught in progress.
        insert_patient(open_writer, target_schema, "MRN-open")
        thread = threading.Thread(
            target=lambda: outcomes.append(
                apply(
                    psycopg.connect(target_dsn, autocommit=True),
                    target_schema,
                    envelope([with_mrn_index], version="002"),
                )
            )
        )
        thread.start()
        try:
            building = _wait_for_concurrent_build(writer, target_schema)
            assert building, "the concurrent build was not seen"
            # While it builds, another connection keeps writing to the table.
            writer.execute("SET statement_timeout = '2s'")
            for n in range(5):
                insert_patient(writer, target_schema, f"MRN-{n + 1}")
            assert _wait_for_concurrent_build(writer, target_schema, timeout=0.1)
        finally:
            open_writer.commit()
            thread.join(timeout=30)
    [outcome] = outcomes
    assert outcome.status == "applied", outcome.response
    outputs = outcome.response["result"]["primary_outputs"]
    [step] = outputs["steps"]
    assert step["status"] == "ran" and step["sql"].startswith("CREATE INDEX CONCURRENTLY")
    assert outputs["verification"]["ok"] is True
    assert index_validity(target_conn, target_schema, "idx_patients_mrn") == [True]
    assert len(rows_of(target_conn, target_schema, "patients")) == 7


def _wait_for_concurrent_build(
    conn: psycopg.Connection, schema: str, timeout: float = 10.0
) -> bool:
    """Whether a CREATE INDEX CONCURRENTLY on `schema` is seen running within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        seen = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%' "
            "AND query LIKE %s AND state = 'active'",
            [f'%"{schema}"%'],
        ).fetchone()[0]
        if seen or time.monotonic() > deadline:
            return bool(seen)
        time.sleep(0.02)


# --- drift --------------------------------------------------------------------------------------


def test_drift_names_each_change_made_by_hand(target_conn, target_schema):
    assert apply(target_conn, target_schema, load_fixture("foundation_v001.json")).status == (
        "applied"
    )
    assert verify_database(target_conn, target_schema).ok

    def run(statement: str, *names: str) -> None:
        target_conn.execute(
            sql.SQL(statement).format(*(sql.Identifier(target_schema, n) for n in names))
        )

    run("DROP INDEX {}", "idx_patients_phone")
    run("ALTER TABLE {} ALTER COLUMN mrn TYPE VARCHAR(20)", "patients")
    run("ALTER TABLE {} ALTER COLUMN full_name DROP NOT NULL", "providers")
    run("ALTER TABLE {} DROP COLUMN specialty", "providers")
    run("ALTER TABLE {} DISABLE ROW LEVEL SECURITY", "locations")
    target_conn.execute(
        sql.SQL("DROP POLICY {} ON {}").format(
            sql.Identifier("claims_tenant_isolation"), sql.Identifier(target_schema, "claims")
        )
    )
    target_conn.execute(
        sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
            sql.Identifier(target_schema, "payments"), sql.Identifier("payments_set_updated_at")
        )
    )

    report = verify_database(target_conn, target_schema)

    assert not report.ok
    text = "\n".join(report.differences)
    assert len(report.differences) == 7, text
    for fragment in (
        "idx_patients_phone",
        "patients.mrn",
        "providers.full_name",
        "providers.specialty",
        "'locations'",
        "claims_tenant_isolation",
        "payments_set_updated_at",
    ):
        assert fragment in text, (fragment, text)


# --- two versions that define the same table at once -------------------------------------------


def test_two_versions_racing_on_one_table_both_end_in_the_database(target_dsn, target_schema):
    def version(column: str) -> dict[str, Any]:
        table = {"name": "cc", "columns": [{"name": column, "type": "TEXT"}]}
        return envelope([table], version=f"cc-{column}")

    barrier = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def send(column: str) -> None:
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            barrier.wait()
            outcomes[column] = apply(conn, target_schema, version(column))

    threads = [threading.Thread(target=send, args=(c,)) for c in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert {c: o.status for c, o in outcomes.items()} == {"a": "applied", "b": "applied"}
    # Planned under the lock: whichever came second found the table and added its column.
    added = sorted(
        "add_column" in {step["action"] for step in o.response["result"]["primary_outputs"]["plan"]}
        for o in outcomes.values()
    )
    assert added == [False, True]
    assert all(
        o.response["result"]["primary_outputs"]["verification"]["ok"] for o in outcomes.values()
    )
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'cc'",
                [target_schema],
            )
        }
        assert {"a", "b"} <= columns
        assert sorted((r[0], r[1]) for r in ledger(conn, target_schema)) == [
            ("cc-a", "success"),
            ("cc-b", "success"),
        ]
        assert verify_database(conn, target_schema).ok
