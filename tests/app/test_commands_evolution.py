"""The evolution commands: schema_diff (the plan against the target) and schema_verify (drift).

Both run on the real target database; versions are applied with the builder itself.
"""

from __future__ import annotations

import io
import json
from typing import Any

import psycopg
import pytest
from django.core.management import CommandError, call_command
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import run_schema_builder
from tests.builder.helpers import FIXTURES, load_fixture

# On the test database (pytest-django sets it up for marked tests only).
pytestmark = pytest.mark.django_db

V001 = str(FIXTURES / "foundation_v001.json")
V002 = str(FIXTURES / "foundation_v002.json")


def run(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command(*args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def apply(conn: psycopg.Connection[Any], target: str, name: str) -> None:
    outcome = run_schema_builder(load_fixture(name), conn, settings=ApplySettings(target))
    assert outcome.status == "applied", outcome.response["result"]


def tables_in(conn: psycopg.Connection[Any], target: str) -> list[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [target])
    return [row[0] for row in rows]


# --- schema_diff ------------------------------------------------------------------------------


def test_schema_diff_on_an_empty_target_creates_every_table_and_changes_nothing(
    target, target_conn
):
    output, error = run("schema_diff", V001)

    assert error is None
    assert output.startswith(
        f"Plan of schema v001 against the target schema {target!r}: 11 operations, risk safe."
    )
    assert "1. [safe] create the function wf106_set_updated_at()" in output
    assert " 2. [safe] create table 'tenants' (8 columns, 3 indexes)" in output
    assert "runs: in the transaction" in output
    assert "after COMMIT" not in output.split("-- SQL")[0]
    assert "Blockers: none." in output and "Notes: none." in output
    assert "Decision under the 'safe' profile: apply." in output
    assert f'CREATE TABLE IF NOT EXISTS "{target}"."patients"' in output.split("-- SQL")[1]
    assert tables_in(target_conn, target) == []


def test_schema_diff_after_v001_plans_only_what_v002_adds(target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    # A row in patients: its new index is built CONCURRENTLY, after COMMIT.
    target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name) VALUES (gen_random_uuid(), 'a', 'b')"
        ).format(sql.Identifier(target, "patients"))
    )
    before = tables_in(target_conn, target)

    output, error = run("schema_diff", V002)

    assert error is None, output
    plan, script = output.split("-- SQL")
    assert "[safe] add column 'email' TEXT to 'patients'" in plan
    assert "[safe] create the index 'idx_patients_mrn' on patients (tenant_id, mrn)" in plan
    assert "runs: after COMMIT" in plan
    assert "reason: 'patients' holds rows: built CONCURRENTLY after COMMIT" in plan
    assert "[safe] create table 'insurance_policies'" in plan
    assert "create table 'tenants'" not in plan  # applied already, and unchanged
    assert "Decision under the 'safe' profile: apply." in plan
    assert f'ALTER TABLE "{target}"."patients" ADD COLUMN IF NOT EXISTS "email" TEXT' in script
    index = f'"idx_patients_mrn" ON "{target}"."patients" ("tenant_id", "mrn")'
    assert f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {index}" in script
    # Nothing ran.
    assert tables_in(target_conn, target) == before
    columns = target_conn.execute(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'patients' AND column_name = 'email'",
        [target],
    ).fetchone()
    assert columns == (0,)


def test_schema_diff_json_has_the_plan_risk_decision_and_sql(target, target_conn):
    apply(target_conn, target, "foundation_v001.json")

    output, error = run("schema_diff", "--json", V002)

    assert error is None
    answer = json.loads(output)
    assert set(answer) >= {"plan", "risk", "decision", "sql", "squawk"}
    assert answer["squawk"]["ran"] is True
    actions = [(op["action"], op["subject"]) for op in answer["plan"]]
    assert ("add_column", "email") in actions
    assert ("add_index", "idx_patients_mrn") in actions
    assert answer["risk"]["level"] == "safe"
    assert answer["decision"] == "apply"
    assert "ADD COLUMN IF NOT EXISTS" in answer["sql"]


def test_schema_diff_lists_blockers_notes_and_the_gates_refusal(tmp_path, target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    target_conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN legacy_code TEXT").format(
            sql.Identifier(target, "providers")
        )
    )
    envelope = load_fixture("foundation_v002.json")
    envelope["payload"]["schema_version"] = "003"
    tables = {t["name"]: t for t in envelope["payload"]["tables"]}
    # Dropping a column is destructive, and the payload does not allow it.
    tables["locations"]["drop_columns"] = ["timezone"]
    tables["locations"]["columns"] = [
        c for c in tables["locations"]["columns"] if c["name"] != "timezone"
    ]
    # A required column without a default, on a table that holds rows, cannot be added.
    tables["tenants"]["columns"].append({"name": "region", "type": "TEXT", "not_null": True})
    target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, name, slug) VALUES (gen_random_uuid(), 'a', 'a')"
        ).format(sql.Identifier(target, "tenants"))
    )
    path = tmp_path / "v003.json"
    path.write_text(json.dumps(envelope))

    output, error = run("schema_diff", str(path))

    assert error is None  # a plan that would be refused is still only printed
    plan = output.split("-- SQL")[0]
    assert "[destructive] drop column locations.timezone" in plan
    assert "rule: ban-drop-column" in plan
    assert "[review] add column 'region' TEXT to 'tenants'" in plan
    assert "rule: adding-required-field" in plan
    assert "runs: not run (blocker)" in plan
    assert "Blockers (1):" in plan
    assert "Adding the NOT NULL column 'region' without a default to 'tenants'" in plan
    assert "Notes (1):" in plan
    assert "Column providers.legacy_code is in the database but not in the payload" in plan
    assert "Decision under the 'safe' profile: block." in plan
    # Squawk's second opinion on the same SQL (the blocker's statement is not in it).
    assert "  - [ban-drop-column] Dropping a column may break existing clients." in plan
    assert f'    on: ALTER TABLE "{target}"."locations" DROP COLUMN' in plan


def test_schema_diff_of_invalid_input_prints_the_errors_and_exits_2(tmp_path, target):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"payload": {"schema_version": "1", "tables": []}}))

    output, error = run("schema_diff", str(path))

    assert error is not None and error.returncode == 2
    assert output.startswith("The request does not pass validation (2 error(s)):")
    assert "  payload.description: " in output and "[required]" in output

    output, error = run("schema_diff", "--json", str(path))
    assert error is not None and error.returncode == 2
    paths = {e["path"] for e in json.loads(output)["validation_errors"]}
    assert paths == {"payload.description", "payload.tables"}


def test_schema_diff_reads_standard_input(target, monkeypatch):
    data = (FIXTURES / "foundation_v001.json").read_bytes()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))

    output, error = run("schema_diff", "--json", "-")

    assert error is None
    assert len(json.loads(output)["plan"]) == 11


def test_schema_diff_of_an_unreadable_file_exits_2(tmp_path, target):
    _, error = run("schema_diff", str(tmp_path / "missing.json"))
    assert error is not None and error.returncode == 2


# --- schema_verify ----------------------------------------------------------------------------


def test_schema_verify_without_a_ledger_has_nothing_to_verify(target):
    output, error = run("schema_verify")
    assert error is None
    assert "records no applied version with its schema: there is nothing to verify" in output


def test_schema_verify_passes_after_applies_and_names_what_was_changed_by_hand(target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    apply(target_conn, target, "foundation_v002.json")

    output, error = run("schema_verify")

    assert error is None, output
    assert output.startswith(f"No drift in the target schema {target!r}: it holds 2 applied")
    assert "Versions read, in the order applied: 001, 002" in output
    assert "insurance_policies" in output

    target_conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(target, "idx_users_email")))
    target_conn.execute(
        sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(
            sql.Identifier(target, "patients")
        )
    )

    output, error = run("schema_verify")

    assert error is not None and error.returncode == 1
    lines = output.splitlines()
    assert "Differences (2):" in lines
    assert "  - Row level security is disabled on 'patients'" in lines
    assert "  - The index 'idx_users_email' of 'users' is missing, invalid or different" in lines

    output, error = run("schema_verify", "--json")
    assert error is not None and error.returncode == 1
    report = json.loads(output)
    assert report["ok"] is False
    assert report["versions"] == ["001", "002"]
    assert len(report["differences"]) == 2
    assert report["unverifiable"] == []


def test_schema_verify_lists_versions_recorded_without_their_schema(target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    target_conn.execute(
        sql.SQL("UPDATE {} SET metadata = metadata - 'schema'").format(
            sql.Identifier(target, "schema_migrations")
        )
    )

    output, error = run("schema_verify")

    assert error is None
    assert "Unverifiable (1):" in output
    assert "  - Version 001 was recorded without its schema; its tables are not checked." in output


# --- the command line, version after version ------------------------------------------------


def test_a_schema_evolves_through_the_commands(target, target_conn):
    for path in (V001, V002):
        output, error = run("schema_apply", path)
        assert error is None, output
        answer = json.loads(output)
        assert answer["result"]["status"] == "applied"
        assert answer["result"]["primary_outputs"]["verification"]["ok"] is True

    output, error = run("schema_diff", V002)
    assert error is None
    assert output.startswith(
        f"Plan of schema v002 against the target schema {target!r}: 0 operations, risk safe."
    )
    output, error = run("schema_verify")
    assert error is None, output
    assert "Versions read, in the order applied: 001, 002" in output
