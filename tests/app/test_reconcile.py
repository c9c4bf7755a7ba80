"""Submissions left `received` by an interrupted apply are settled against the target's ledger:
by a retry of the same request, or by `manage.py reconcile_submissions`.

The interrupted apply is a real `manage.py schema_apply` process, killed (SIGKILL) after the
target committed and before it stored the outcome: it is caught there because its index on a
table with rows is built concurrently after COMMIT, and such a build waits for a transaction
this test keeps open on the table.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.utils import timezone
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import prepare, run_schema_builder
from revos_schema.envvars import environment_without_settings
from revos_schema.models import SchemaEvent, SchemaPlan, SchemaSubmission
from tests.app.test_deploy import database_url
from tests.builder.helpers import PATIENTS, envelope

pytestmark = pytest.mark.django_db(transaction=True)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TENANT = "00000000-0000-0000-0000-00000000000a"
WITH_MRN_INDEX = {**PATIENTS, "indexes": [*PATIENTS["indexes"], {"columns": ["mrn"]}]}


def ledger_rows(conn: psycopg.Connection, target: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL(
            "SELECT id::text, version, status, error_message FROM {} ORDER BY applied_at"
        ).format(sql.Identifier(target, "schema_migrations"))
    ).fetchall()


def add_patient(conn: psycopg.Connection, target: str) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (tenant_id, first_name, last_name) VALUES (%s, 'a', 'b')").format(
            sql.Identifier(target, "patients")
        ),
        [TENANT],
    )


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def start_schema_apply(
    request: Path, target: str, log: Path | None = None, **environment: str
) -> subprocess.Popen:
    """Start `manage.py schema_apply REQUEST` in a process of its own, on the test databases."""
    env = environment_without_settings()
    env.update(
        DATABASE_URL=database_url(),
        WF106_TARGET_SCHEMA=target,
        DJANGO_SETTINGS_MODULE="revos_schema.settings",
        PYTHONPATH=str(PROJECT_ROOT),
        DEBUG="1",
    )
    env.update(environment)
    return subprocess.Popen(
        [sys.executable, "manage.py", "schema_apply", str(request)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if log is None else log.open("w"),
    )


APP_CONNECTION = "revos-app-under-test"


def killed_after_commit(
    target: str,
    target_conn: psycopg.Connection,
    target_dsn: str,
    tmp_path,
    *,
    fault: str = "kill",
):
    """Apply v001 in-process, then v002 in a `schema_apply` process interrupted after its
    COMMIT: killed (`fault="kill"`), or its connection to the app's database terminated
    (`fault="app-connection"`), so that it cannot store the outcome."""
    assert (
        run_schema_builder(envelope([PATIENTS]), target_conn, settings=ApplySettings(target)).status
        == "applied"
    )
    add_patient(target_conn, target)
    request = tmp_path / "v002.json"
    request.write_text(json.dumps(envelope([WITH_MRN_INDEX], version="002")))
    with psycopg.connect(target_dsn) as open_writer:
        add_patient(open_writer, target)
        # The app's connections are named, to be told from the target's (the same database).
        worker = start_schema_apply(
            request,
            target,
            tmp_path / "worker.log",
            DATABASE_URL=f"{database_url()}?application_name={APP_CONNECTION}",
        )
        try:
            reached = wait_for_concurrent_build(target_conn, target, worker)
            assert reached, (tmp_path / "worker.log").read_text()
            if fault == "app-connection":
                ended = target_conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                    "FROM pg_stat_activity WHERE application_name = %s",
                    [APP_CONNECTION],
                ).fetchone()[0]
                assert ended >= 1
                open_writer.rollback()  # the build goes on; storing the outcome then fails
                assert worker.wait(timeout=60) == 1
        finally:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        if not open_writer.closed:
            open_writer.rollback()


def wait_for_concurrent_build(
    conn: psycopg.Connection, target: str, worker: subprocess.Popen, timeout: float = 60
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        seen = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%' "
            "AND query LIKE %s",
            [f'%"{target}"%'],
        ).fetchone()[0]
        if seen:
            return True
        time.sleep(0.05)
    return False


def stuck_submission() -> SchemaSubmission:
    [stuck] = SchemaSubmission.objects.filter(schema_version="002")
    assert stuck.status == "received"
    assert not SchemaEvent.objects.filter(submission=stuck).exists()
    return stuck


@pytest.mark.parametrize("fault", ["kill", "app-connection"])
def test_a_retry_settles_a_request_interrupted_after_its_commit(
    target, target_conn, target_dsn, tmp_path, fault
):
    killed_after_commit(target, target_conn, target_dsn, tmp_path, fault=fault)
    stuck = stuck_submission()
    rows = ledger_rows(target_conn, target)
    assert [(r[1], r[2]) for r in rows] == [("001", "success"), ("002", "success")]
    assert str(stuck.migration_log_id) == rows[1][0]

    # The same request again: a noop, and the stuck submission is completed with its event.
    again = json.loads(run("schema_apply", str(tmp_path / "v002.json")))

    assert again["result"]["status"] == "noop"
    stuck.refresh_from_db()
    assert (stuck.status, stuck.http_status) == ("applied", 200)
    assert stuck.response["result"]["primary_outputs"]["migration_log_id"] == rows[1][0]
    [event] = SchemaEvent.objects.filter(submission=stuck)
    assert event.event_type == "schema_migration_applied"
    assert event.payload["migration_log_id"] == rows[1][0]
    # A second retry changes nothing more.
    run("schema_apply", str(tmp_path / "v002.json"))
    assert SchemaEvent.objects.filter(submission=stuck).count() == 1


def test_reconcile_submissions_settles_a_request_killed_after_its_commit(
    target, target_conn, target_dsn, tmp_path
):
    killed_after_commit(target, target_conn, target_dsn, tmp_path)
    stuck = stuck_submission()

    output = run("reconcile_submissions")

    assert f"{stuck.pk}: applied (its apply committed)" in output
    assert "Settled 1 submission(s): 1 applied, 0 failed" in output
    stuck.refresh_from_db()
    assert stuck.status == "applied"
    assert SchemaEvent.objects.filter(
        submission=stuck, event_type="schema_migration_applied"
    ).exists()
    assert "Settled 0 submission(s)" in run("reconcile_submissions")


def orphan(target: str, *, age: timedelta) -> SchemaSubmission:
    """A submission stored `received` whose apply never committed (its process died first)."""
    request = envelope([PATIENTS], version="007")
    prepared = prepare(request, target_schema=target)
    script = prepared.migration.script
    plan = SchemaPlan.objects.create(
        digest=SchemaPlan.digest_of(prepared.schema_hash, script),
        normalized_schema=prepared.schema.to_dict(),
        generated_sql=script,
    )
    submission = SchemaSubmission.objects.create(
        source="cli",
        envelope=request,
        schema_version="007",
        schema_hash=prepared.schema_hash,
        idempotency_key=prepared.idempotency_key,
        plan=plan,
        migration_log_id=uuid.uuid4(),  # the row its transaction inserted, never committed
    )
    SchemaSubmission.objects.filter(pk=submission.pk).update(created_at=timezone.now() - age)
    return submission


def test_an_interrupted_apply_is_failed_and_put_in_the_ledger_with_its_sql(
    target, target_conn, settings, receiver
):
    settings.WF106_STATEMENT_TIMEOUT_MS = 60_000
    old = orphan(target, age=timedelta(minutes=5))

    output = run("reconcile_submissions")

    assert f"{old.pk}: failed (interrupted before its apply committed)" in output
    old.refresh_from_db()
    assert (old.status, old.http_status) == ("failed", 500)
    assert old.error_message.startswith("interrupted: ")
    [row] = target_conn.execute(
        sql.SQL(
            "SELECT id::text, version, status, sql_script, applied_by, metadata FROM {}"
        ).format(sql.Identifier(target, "schema_migrations"))
    ).fetchall()
    assert (row[0], row[1], row[2]) == (str(old.migration_log_id), "007", "failed")
    assert row[3] == old.generated_sql
    assert row[4] == "cli"
    assert row[5]["submission_id"] == str(old.pk)
    [event] = SchemaEvent.objects.all()
    assert (event.event_type, event.submission_id) == ("schema_migration_failed", old.pk)
    assert event.payload["migration_log_id"] == row[0]
    assert event.payload["error"] == old.error_message
    # Delivered right after the settlement committed.
    [got] = receiver.received
    assert got.verified and got.payload == event.payload
    event.refresh_from_db()
    assert event.delivery_status == "delivered"


def test_a_submission_that_may_still_commit_is_left_alone(target, target_conn, settings):
    settings.WF106_STATEMENT_TIMEOUT_MS = 60_000
    young = orphan(target, age=timedelta(seconds=5))

    output = run("reconcile_submissions")

    assert "1 may still commit and were left as received" in output
    young.refresh_from_db()
    assert young.status == "received"


def test_a_request_killed_in_the_middle_of_its_script_is_recorded_as_interrupted(
    target, target_conn, target_dsn, tmp_path, settings
):
    assert (
        run_schema_builder(envelope([PATIENTS]), target_conn, settings=ApplySettings(target)).status
        == "applied"
    )
    with_email = {**PATIENTS, "columns": [*PATIENTS["columns"], {"name": "email", "type": "TEXT"}]}
    request = tmp_path / "v002.json"
    request.write_text(json.dumps(envelope([with_email], version="002")))
    in_script = "SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND wait_event_type = 'Lock'"
    alter = f'%ALTER TABLE "{target}"."patients" ADD COLUMN IF NOT EXISTS "email"%'
    with psycopg.connect(target_dsn) as open_writer:
        # A transaction on the table: the script's ALTER TABLE waits for it.
        add_patient(open_writer, target)
        # It waits for the lock until it is killed.
        worker = start_schema_apply(request, target, WF106_LOCK_TIMEOUT_MS="60000")
        try:
            deadline = time.monotonic() + 60
            while not target_conn.execute(in_script, [alter]).fetchall():
                assert time.monotonic() < deadline and worker.poll() is None
                time.sleep(0.05)
        finally:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    # The killed apply's backend ends once it finds its client gone: its transaction is rolled back.
    deadline = time.monotonic() + 60
    while target_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s", [alter]
    ).fetchone()[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [stuck] = SchemaSubmission.objects.filter(schema_version="002")
    assert (stuck.status, stuck.migration_log_id) == ("received", None)
    assert stuck.generated_sql  # the attempt is on record with its SQL
    assert [(r[1], r[2]) for r in ledger_rows(target_conn, target)] == [("001", "success")]

    settings.WF106_STATEMENT_TIMEOUT_MS = 1  # its transaction is over: settle it now
    output = run("reconcile_submissions")

    assert f"{stuck.pk}: failed (interrupted before its apply committed)" in output
    stuck.refresh_from_db()
    assert stuck.status == "failed" and stuck.error_message.startswith("interrupted")
    rows = ledger_rows(target_conn, target)
    assert [(r[1], r[2]) for r in rows] == [("001", "success"), ("002", "failed")]
    assert rows[1][0] == str(stuck.migration_log_id)
    email = target_conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = 'patients' AND column_name = 'email'",
        [target],
    ).fetchone()[0]
    assert email == 0


def test_a_request_killed_while_it_waits_for_the_lock_leaves_nothing_to_settle(
    target, target_conn, target_dsn, tmp_path
):
    from builder.db.apply import advisory_lock_key

    request = tmp_path / "v001.json"
    request.write_text(json.dumps(envelope([PATIENTS])))
    key = advisory_lock_key(target)
    with psycopg.connect(target_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [key])
        worker = start_schema_apply(request, target)
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'advisory' "
            "AND query LIKE '%%pg_advisory_xact_lock%%'"
        )
        try:
            deadline = time.monotonic() + 60
            while not (pids := target_conn.execute(waiting).fetchall()):
                assert time.monotonic() < deadline and worker.poll() is None
                time.sleep(0.05)
        finally:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        # Its backend ends once it finds its client gone (here: when the lock is released).
        holder.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
    deadline = time.monotonic() + 30
    alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
    while target_conn.execute(alive, pids[0]).fetchone()[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    # Nothing ran and nothing is on record; the retry applies it.
    assert not SchemaSubmission.objects.exists()
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = 'patients'"
    assert target_conn.execute(tables, [target]).fetchone()[0] == 0
    assert json.loads(run("schema_apply", str(request)))["result"]["status"] == "applied"
    assert [(r[1], r[2]) for r in ledger_rows(target_conn, target)] == [("001", "success")]
