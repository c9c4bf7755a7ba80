"""The builder service against a real PostgreSQL target: apply, noop, conflict, failure, locks."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from typing import Any

import psycopg
import pytest
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import run_schema_builder
from tests.builder.helpers import PATIENTS, envelope, load_fixture

APPOINTMENTS = {
    "name": "appointments",
    "columns": [
        {
            "name": "patient_id",
            "type": "UUID",
            "not_null": True,
            "references": {"table": "patients", "on_delete": "cascade"},
        },
        {"name": "starts_at", "type": "TIMESTAMPTZ", "not_null": True},
    ],
}


def settings_for(schema: str, **overrides: Any) -> ApplySettings:
    return ApplySettings(target_schema=schema, **overrides)


def ledger_rows(conn: psycopg.Connection, schema: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL(
            "SELECT version, status, schema_hash, sql_script, error_message, checksum "
            "FROM {} ORDER BY applied_at, status"
        ).format(sql.Identifier(schema, "schema_migrations"))
    ).fetchall()


def relations(conn: psycopg.Connection, schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s",
        [schema],
    ).fetchall()
    return {r[0] for r in rows}


def column_type(conn: psycopg.Connection, schema: str, table: str, column: str) -> str:
    return conn.execute(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        [schema, table, column],
    ).fetchone()[0]


def ledger_metadata(conn: psycopg.Connection, schema: str, row_id: Any) -> dict[str, Any]:
    return conn.execute(
        sql.SQL("SELECT metadata FROM {} WHERE id = %s").format(
            sql.Identifier(schema, "schema_migrations")
        ),
        [row_id],
    ).fetchone()[0]


def index_validity(conn: psycopg.Connection, schema: str, name: str) -> list[bool]:
    """Whether each index `name` of `schema` is valid (an empty list: there is none)."""
    rows = conn.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        [schema, name],
    ).fetchall()
    return [row[0] for row in rows]


def test_apply_then_noop_then_conflict(target_conn, target_schema):
    settings = settings_for(target_schema)
    first = run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    assert first.status == "applied", first.response
    assert first.http_status == 200
    outputs = first.response["result"]["primary_outputs"]
    assert outputs["tables_created"] == 1
    assert outputs["indexes_created"] == 3
    assert {"patients", "idx_patients_tenant_id", "idx_patients_phone"} <= relations(
        target_conn, target_schema
    )
    [row] = ledger_rows(target_conn, target_schema)
    assert row[:3] == ("001", "success", first.schema_hash)
    assert row[3] == first.migration.script
    assert outputs["migration_log_id"] == first.migration_log_id
    written = first.response["audit"]["data_written"]
    assert written == [
        {"table": "schema_migrations", "record_id": first.migration_log_id, "status": "success"}
    ]

    again = run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    assert again.status == "noop"
    assert again.http_status == 200
    assert again.response["result"]["already_applied_at"] is not None
    assert again.migration_log_id == first.migration_log_id
    assert len(ledger_rows(target_conn, target_schema)) == 1

    changed = {**PATIENTS, "columns": [*PATIENTS["columns"], {"name": "email", "type": "TEXT"}]}
    conflict = run_schema_builder(envelope([changed]), target_conn, settings=settings)
    assert conflict.status == "conflict"
    assert conflict.http_status == 409
    details = conflict.response["result"]["conflict"]
    assert details["applied_schema_hash"] == first.schema_hash
    assert details["requested_schema_hash"] == conflict.schema_hash != first.schema_hash
    assert len(ledger_rows(target_conn, target_schema)) == 1


def test_foundation_fixtures_apply_in_sequence(target_conn, target_schema):
    settings = settings_for(target_schema)
    v1 = run_schema_builder(load_fixture("foundation_v001.json"), target_conn, settings=settings)
    assert v1.status == "applied", v1.response
    assert v1.response["result"]["primary_outputs"]["tables_created"] == 10
    v2 = run_schema_builder(load_fixture("foundation_v002.json"), target_conn, settings=settings)
    assert v2.status == "applied", v2.response
    outputs = v2.response["result"]["primary_outputs"]
    # v002 adds one table; the ten that exist are compared with it, not skipped.
    assert outputs["tables_created"] == 1
    assert outputs["verification"] == {"ok": True, "differences": []}
    assert "insurance_policies" in relations(target_conn, target_schema)
    assert not any("already existed" in w for w in outputs["warnings"])


def test_failed_migration_rolls_back_and_is_recorded(target_conn, target_schema):
    settings = settings_for(target_schema)
    assert run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings).status == (
        "applied"
    )
    table = sql.Identifier(target_schema, "patients")
    target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name, mrn) "
            "VALUES ('00000000-0000-0000-0000-00000000000a', 'a', 'b', 'not a number')"
        ).format(table)
    )
    before = relations(target_conn, target_schema)
    # A type change the profile lets through, whose cast fails on the row: it runs inside the
    # apply's transaction, with the new table, and all of it is rolled back.
    numeric_mrn = {
        **PATIENTS,
        "columns": [
            {**c, "type": "INTEGER"} if c["name"] == "mrn" else c for c in PATIENTS["columns"]
        ],
    }
    request = envelope([numeric_mrn, APPOINTMENTS], version="002")
    request["context"]["validation_profile"] = "permissive"
    outcome = run_schema_builder(request, target_conn, settings=settings)
    assert outcome.status == "failed"
    assert outcome.http_status == 500
    assert outcome.error.startswith("22P02")
    assert outcome.response["result"]["error"] == outcome.error
    # Nothing of 002 is left behind: no appointments table, mrn still text.
    assert relations(target_conn, target_schema) == before
    assert column_type(target_conn, target_schema, "patients", "mrn") == "text"
    rows = ledger_rows(target_conn, target_schema)
    assert [(r[0], r[1]) for r in rows] == [("001", "success"), ("002", "failed")]
    assert rows[1][3] == outcome.migration.script
    assert 'ALTER COLUMN "mrn" TYPE INTEGER' in rows[1][3]
    assert "22P02" in rows[1][4]
    assert outcome.response["audit"]["data_written"][0]["status"] == "failed"


def test_a_failed_concurrent_index_leaves_no_invalid_index_and_is_recorded(
    target_conn, target_schema
):
    settings = settings_for(target_schema)
    assert run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings).status == (
        "applied"
    )
    table = sql.Identifier(target_schema, "patients")
    for _ in range(2):
        target_conn.execute(
            sql.SQL(
                "INSERT INTO {} (tenant_id, first_name, last_name, mrn) "
                "VALUES ('00000000-0000-0000-0000-00000000000a', 'a', 'b', 'MRN-1')"
            ).format(table)
        )
    unique_mrn = {
        **PATIENTS,
        "indexes": [*PATIENTS["indexes"], {"columns": ["mrn"], "unique": True}],
    }
    outcome = run_schema_builder(
        envelope([unique_mrn, APPOINTMENTS], version="002"), target_conn, settings=settings
    )
    # The transaction committed (the new table is there); the unique index, built
    # concurrently after it because patients holds rows, failed on the duplicates.
    assert outcome.status == "failed", outcome.response
    assert "23505" in outcome.error
    assert "appointments" in relations(target_conn, target_schema)
    assert "idx_patients_mrn" not in relations(target_conn, target_schema)
    invalid = target_conn.execute(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND NOT i.indisvalid",
        [target_schema],
    ).fetchone()[0]
    assert invalid == 0
    rows = ledger_rows(target_conn, target_schema)
    assert [(r[0], r[1]) for r in rows] == [("001", "success"), ("002", "failed")]
    assert "CREATE UNIQUE INDEX CONCURRENTLY" in rows[1][3]
    metadata = ledger_metadata(target_conn, target_schema, outcome.migration_log_id)
    steps = metadata["steps"]
    assert [s["status"] for s in steps if s["sql"].startswith("CREATE UNIQUE")] == ["failed"]
    assert any(s["sql"].startswith("DROP INDEX CONCURRENTLY") for s in steps)
    assert outcome.response["result"]["primary_outputs"]["steps"] == steps


@pytest.mark.slow
def test_concurrent_applies_of_one_version_apply_exactly_once(target_dsn, target_schema):
    settings = settings_for(target_schema)
    request = load_fixture("foundation_v001.json")
    barrier = threading.Barrier(8)
    statuses: list[str] = []
    recorded: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with psycopg.connect(target_dsn, autocommit=True) as conn:
                barrier.wait()
                outcome = run_schema_builder(
                    request, conn, settings=settings, before_commit=recorded.append
                )
                statuses.append(outcome.status)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sorted(statuses) == ["applied"] + ["noop"] * 7
    assert len(recorded) == 1  # only the apply that writes records an attempt
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        assert [r[1] for r in ledger_rows(conn, target_schema)] == ["success"]


def apply_v2_while_patients_is_locked(
    target_dsn: str, target_conn: psycopg.Connection, settings: ApplySettings
) -> tuple[Any, float]:
    """Apply v001 (patients), then v002 (adds appointments, which references patients) while
    another session holds an ACCESS EXCLUSIVE lock on patients; return v002's outcome and the
    seconds it took."""
    assert run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings).status == (
        "applied"
    )
    with psycopg.connect(target_dsn) as holder:
        holder.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(settings.target_schema, "patients")
            )
        )
        started = time.monotonic()
        outcome = run_schema_builder(
            envelope([PATIENTS, APPOINTMENTS], version="002"), target_conn, settings=settings
        )
        elapsed = time.monotonic() - started
        holder.rollback()
    return outcome, elapsed


def test_lock_on_referenced_table_fails_within_lock_timeout(target_dsn, target_conn, target_schema):
    settings = settings_for(target_schema, lock_timeout_ms=300)
    outcome, elapsed = apply_v2_while_patients_is_locked(target_dsn, target_conn, settings)
    assert outcome.status == "failed"
    assert outcome.error.startswith("55P03"), outcome.error  # lock_not_available
    # It gave up after its lock timeout instead of queueing behind the lock.
    assert elapsed < 10
    assert "appointments" not in relations(target_conn, target_schema)
    assert [r[1] for r in ledger_rows(target_conn, target_schema)] == ["success", "failed"]


def test_the_ledger_row_keeps_caller_text_exactly_and_the_time_of_the_script(
    target_conn, target_schema
):
    # Caller text travels as query parameters: it must come back exactly.
    description = "O'Brien's \\ \"schema\"; DROP TABLE patients; -- 漢字 \u00e9"
    request = envelope([PATIENTS], description=description)
    request["context"]["actor_id"] = "ops'; SELECT 1; --"
    started = time.monotonic()
    outcome = run_schema_builder(
        request, target_conn, settings=settings_for(target_schema), account="svc-ledger"
    )
    wall_ms = (time.monotonic() - started) * 1000

    assert outcome.status == "applied"
    row = target_conn.execute(
        sql.SQL(
            "SELECT description, applied_by, sql_script, execution_ms, metadata "
            "FROM {} WHERE id = %s"
        ).format(sql.Identifier(target_schema, "schema_migrations")),
        [outcome.migration_log_id],
    ).fetchone()
    assert row is not None
    stored_description, applied_by, script, execution_ms, metadata = row
    assert stored_description == description
    # The ledger names the account that sent the request; the caller's claim is kept as such.
    assert applied_by == "svc-ledger"
    assert metadata["claimed_actor_id"] == "ops'; SELECT 1; --"
    assert script == outcome.migration.script
    # The time of the whole script, not of the INSERT alone.
    assert 1 <= execution_ms <= wall_ms
    assert metadata["tables_created"] == ["patients"]
    assert "patients" in relations(target_conn, target_schema)


def test_statement_timeout_bounds_the_script_and_does_not_outlive_it(
    target_dsn, target_conn, target_schema
):
    # A long lock_timeout and a short statement_timeout: the statement that waits for the lock
    # is cancelled by the statement timeout (57014), not by the lock timeout (55P03).
    settings = settings_for(target_schema, lock_timeout_ms=60_000, statement_timeout_ms=300)
    outcome, elapsed = apply_v2_while_patients_is_locked(target_dsn, target_conn, settings)
    assert outcome.status == "failed"
    assert outcome.error.startswith("57014"), outcome.error  # query_canceled
    assert elapsed < 10
    # The timeouts were set for the apply's transaction only, not for the connection.
    assert target_conn.execute("SHOW statement_timeout").fetchone() == ("0",)
    assert target_conn.execute("SHOW lock_timeout").fetchone() == ("0",)


def test_dry_run_touches_nothing(target_conn, target_schema):
    outcome = run_schema_builder(
        envelope([PATIENTS], dry_run=True), target_conn, settings=settings_for(target_schema)
    )
    assert outcome.status == "preview"
    assert outcome.response["result"]["primary_outputs"]["sql"] == outcome.migration.script
    assert relations(target_conn, target_schema) == set()


def test_force_apply_reapplies_and_records(target_conn, target_schema):
    settings = settings_for(target_schema)
    first = run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    target_conn.execute(
        sql.SQL("DROP INDEX {}").format(sql.Identifier(target_schema, "idx_patients_phone"))
    )
    forced = run_schema_builder(
        envelope([PATIENTS], force_apply=True), target_conn, settings=settings
    )
    assert forced.status == "applied"
    assert forced.response["result"]["primary_outputs"]["reapplied"] is True
    assert forced.response["result"]["primary_outputs"]["indexes_created"] == 1
    assert "idx_patients_phone" in relations(target_conn, target_schema)
    statuses = [r[1] for r in ledger_rows(target_conn, target_schema)]
    assert statuses == ["success", "reapplied"]
    assert first.schema_hash == forced.schema_hash


def test_events_are_emitted_only_for_applied(target_conn, target_schema):
    events: list[dict[str, Any]] = []
    settings = settings_for(target_schema)
    run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings, emit=events.append)
    run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings, emit=events.append)
    assert [e["event_type"] for e in events] == ["schema_migration_applied"]
    assert events[0]["schema_version"] == "001"
    assert events[0]["table_count"] == 1


def test_an_applied_version_is_a_noop_even_while_another_apply_holds_the_lock(
    target_dsn, target_conn, target_schema
):
    settings = settings_for(target_schema, lock_wait_ms=200)
    assert run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings).status == (
        "applied"
    )
    with psycopg.connect(target_dsn, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", [f"wf106:{target_schema}"]
        )
        noop = run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
        # Anything that must be decided under the lock waits for it, and gives up after
        # lock_wait_ms: a new version fails with lock_not_available and is recorded.
        blocked = run_schema_builder(
            envelope([PATIENTS], version="002"), target_conn, settings=settings
        )
    assert noop.status == "noop"
    assert blocked.status == "failed"
    assert blocked.error.startswith("55P03")


def test_before_commit_runs_once_under_the_lock_before_anything_is_committed(
    target_dsn, target_conn, target_schema
):
    settings = settings_for(target_schema)
    seen: list[tuple[Any, ...]] = []
    with psycopg.connect(target_dsn, autocommit=True) as observer:

        def before_commit(prepared: Any) -> None:
            seen.append(
                observer.execute(
                    "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = %s AND granted), to_regclass(%s), to_regclass(%s)",
                    [
                        target_conn.info.backend_pid,
                        f"{target_schema}.patients",
                        f"{target_schema}.schema_migrations",
                    ],
                ).fetchone()
            )
            assert prepared.schema.version == "001"

        applied = run_schema_builder(
            envelope([PATIENTS]), target_conn, settings=settings, before_commit=before_commit
        )
        # Holding the target's lock; neither the table nor the ledger committed yet.
        assert seen == [(1, None, None)]
        assert applied.status == "applied"
        assert "patients" in relations(observer, target_schema)
        # Not called for answers that write nothing to the target.
        noop = run_schema_builder(
            envelope([PATIENTS]), target_conn, settings=settings, before_commit=before_commit
        )
        changed = {**PATIENTS, "columns": [*PATIENTS["columns"], {"name": "email", "type": "TEXT"}]}
        conflict = run_schema_builder(
            envelope([changed]),
            target_conn,
            settings=settings,
            before_commit=before_commit,
        )
    assert (noop.status, conflict.status) == ("noop", "conflict")
    assert len(seen) == 1


def test_a_failing_before_commit_rolls_the_apply_back_and_is_recorded(target_conn, target_schema):
    from builder.errors import CallerFailed

    settings = settings_for(target_schema)
    run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    before = relations(target_conn, target_schema)

    def before_commit(prepared: Any) -> None:
        raise RuntimeError("the submissions database went away")

    with pytest.raises(CallerFailed) as raised:
        run_schema_builder(
            envelope([PATIENTS, APPOINTMENTS], version="002"),
            target_conn,
            settings=settings,
            before_commit=before_commit,
        )
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert relations(target_conn, target_schema) == before  # no appointments, no new index
    rows = ledger_rows(target_conn, target_schema)
    assert [(r[0], r[1]) for r in rows] == [("001", "success"), ("002", "failed")]
    assert rows[1][3].startswith("-- WF106 schema v002")
    assert "recording the attempt failed" in rows[1][4]
    assert "the submissions database went away" in rows[1][4]
    assert target_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # The connection is usable, and the version can be applied later.
    again = run_schema_builder(
        envelope([PATIENTS, APPOINTMENTS], version="002"), target_conn, settings=settings
    )
    assert again.status == "applied"


def advisory_locks(conn: psycopg.Connection, pid: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", [pid]
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_blocked_request_leaves_the_target_connection_idle_and_the_target_unchanged(
    target_dsn, target_conn, target_schema
):
    settings = settings_for(target_schema)
    run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    before = relations(target_conn, target_schema), ledger_rows(target_conn, target_schema)
    bad = envelope([{**PATIENTS, "columns": [{"name": "x", "type": "NOT A TYPE"}]}], "002")
    with psycopg.connect(target_dsn, autocommit=True) as observer:
        for _ in range(3):
            outcome = run_schema_builder(bad, target_conn, settings=settings)
            assert outcome.status == "blocked"
            assert target_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert advisory_locks(observer, target_conn.info.backend_pid) == 0
    assert (relations(target_conn, target_schema), ledger_rows(target_conn, target_schema)) == (
        before
    )


def test_only_relations_of_the_target_schema_count_as_existing(
    target_dsn, target_conn, target_schema
):
    other = f"{target_schema}_other"
    target_conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
    try:
        for relation in ("patients", "idx_patients_tenant_id"):
            target_conn.execute(
                sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(other, relation))
            )
        outcome = run_schema_builder(
            envelope([PATIENTS]), target_conn, settings=settings_for(target_schema)
        )
    finally:
        target_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))
    outputs = outcome.response["result"]["primary_outputs"]
    assert (outputs["tables_created"], outputs["indexes_created"]) == (1, 3)
    assert outputs["warnings"] == []


def test_the_ledger_row_names_what_the_script_created_as_the_server_saw_it(
    target_conn, target_schema
):
    settings = settings_for(target_schema)
    first = run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    patients_indexes = [i.name for t in first.schema.tables for i in t.indexes]
    outcome = run_schema_builder(
        envelope([PATIENTS, APPOINTMENTS], version="002"), target_conn, settings=settings
    )
    assert outcome.status == "applied"
    metadata = target_conn.execute(
        sql.SQL("SELECT metadata FROM {} WHERE id = %s").format(
            sql.Identifier(target_schema, "schema_migrations")
        ),
        [outcome.migration_log_id],
    ).fetchone()[0]
    indexes = [i.name for t in outcome.schema.tables for i in t.indexes]
    created = [i for i in indexes if i not in patients_indexes]
    assert patients_indexes and created  # both kinds are there
    # In the schema's order, as the server saw the target before the script ran.
    assert metadata["tables_created"] == ["appointments"]
    assert metadata["indexes_created"] == created
    outputs = outcome.response["result"]["primary_outputs"]
    assert (outputs["tables_created"], outputs["indexes_created"]) == (1, len(created))
    assert outputs["warnings"] == []
    assert outputs["verification"]["ok"] is True


class _WorkerStopping(BaseException):
    """Stands for a worker being stopped (SystemExit, KeyboardInterrupt) during an apply."""


def test_a_worker_stopped_during_before_commit_rolls_the_apply_back(target_conn, target_schema):
    settings = settings_for(target_schema)
    run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    before = relations(target_conn, target_schema), ledger_rows(target_conn, target_schema)

    def before_commit(prepared: Any) -> None:
        raise _WorkerStopping

    with pytest.raises(_WorkerStopping):
        run_schema_builder(
            envelope([PATIENTS, APPOINTMENTS], version="002"),
            target_conn,
            settings=settings,
            before_commit=before_commit,
        )
    assert target_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (relations(target_conn, target_schema), ledger_rows(target_conn, target_schema)) == (
        before
    )


# --- the target connection breaks during the apply ----------------------------------------------


def lender_of(worker: psycopg.Connection, later: str):
    """Lend `worker` first (the apply's connection), then new connections to `later`."""
    lent = iter([worker])

    def lend():
        conn = next(lent, None)
        return nullcontext(conn) if conn else psycopg.connect(later, autocommit=True)

    return lend


def break_before_commit(admin: psycopg.Connection, worker: psycopg.Connection):
    """A `before_commit` that terminates the worker's backend: its COMMIT then fails."""
    pid = worker.info.backend_pid

    def before_commit(prepared: Any) -> None:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])

    return before_commit


def test_a_broken_connection_is_recorded_as_failed_on_a_fresh_one(
    target_conn, target_dsn, target_schema
):
    settings = settings_for(target_schema)
    run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    with psycopg.connect(target_dsn, autocommit=True) as worker:
        outcome = run_schema_builder(
            envelope([PATIENTS, APPOINTMENTS], version="002"),
            lender_of(worker, target_dsn),
            settings=settings,
            before_commit=break_before_commit(target_conn, worker),
        )
    assert outcome.status == "failed" and not outcome.unrecorded
    assert "appointments" not in relations(target_conn, target_schema)
    rows = ledger_rows(target_conn, target_schema)
    assert [(r[0], r[1]) for r in rows] == [("001", "success"), ("002", "failed")]
    assert rows[1][3] == outcome.migration.script
    assert "the connection to the target broke; recorded on a new one" in rows[1][4]
    assert outcome.migration_log_id is not None


def test_a_broken_connection_to_an_unreachable_target_is_left_to_settle(
    target_conn, target_dsn, target_schema
):
    settings = settings_for(target_schema)
    run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    worker = psycopg.connect(target_dsn, autocommit=True)
    outcome = run_schema_builder(
        envelope([PATIENTS, APPOINTMENTS], version="002"),
        # Nothing listens on port 1: the target cannot be reached again.
        lender_of(worker, "host=127.0.0.1 port=1 connect_timeout=2"),
        settings=settings,
        before_commit=break_before_commit(target_conn, worker),
    )
    worker.close()
    assert outcome.status == "failed" and outcome.unrecorded
    result = outcome.response["result"]
    assert "settled from its ledger" in result["summary"]
    assert result["primary_outputs"]["migration_log_id"] is None
    assert outcome.response["audit"]["data_written"] == []
    # The row its transaction inserted is the one to look for; it did not commit.
    assert outcome.migration_log_id is not None
    assert [(r[0], r[1]) for r in ledger_rows(target_conn, target_schema)] == [("001", "success")]


def test_a_connection_broken_after_commit_finishes_the_steps_on_a_fresh_one(
    target_conn, target_dsn, target_schema
):
    settings = settings_for(target_schema)
    run_schema_builder(envelope([PATIENTS]), target_conn, settings=settings)
    target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name) "
            "VALUES ('00000000-0000-0000-0000-00000000000a', 'a', 'b')"
        ).format(sql.Identifier(target_schema, "patients"))
    )
    with_mrn = {**PATIENTS, "indexes": [*PATIENTS["indexes"], {"columns": ["mrn"]}]}
    outcomes: list[Any] = []
    worker = psycopg.connect(target_dsn, autocommit=True)
    with psycopg.connect(target_dsn) as snapshot:
        # An old snapshot: the concurrent build waits for it, and is caught there.
        snapshot.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        snapshot.execute("SELECT 1").fetchone()
        thread = threading.Thread(
            target=lambda: outcomes.append(
                run_schema_builder(
                    envelope([with_mrn], version="002"),
                    lender_of(worker, target_dsn),
                    settings=settings,
                )
            )
        )
        thread.start()
        building = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%'"
        deadline = time.monotonic() + 30
        while not (pids := target_conn.execute(building).fetchall()):
            assert time.monotonic() < deadline, "the concurrent build was not seen"
            time.sleep(0.02)
        target_conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pids[0][0]])
        snapshot.rollback()
    thread.join(timeout=60)
    worker.close()
    [outcome] = outcomes
    assert outcome.status == "applied", outcome.response
    outputs = outcome.response["result"]["primary_outputs"]
    assert [s["status"] for s in outputs["steps"]] == ["ran"]
    assert outputs["verification"] == {"ok": True, "differences": []}
    assert index_validity(target_conn, target_schema, "idx_patients_mrn") == [True]
    metadata = ledger_metadata(target_conn, target_schema, outcome.migration_log_id)
    assert metadata["verification"]["ok"] is True
    assert [r[1] for r in ledger_rows(target_conn, target_schema)] == ["success", "success"]
