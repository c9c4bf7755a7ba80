"""The pipeline commands: schema_preview and schema_apply, over the real services and database."""

from __future__ import annotations

import getpass
import io
import json

import pytest
from django.core.management import CommandError, call_command

from revos_schema.models import SchemaEvent, SchemaSubmission
from tests.builder.helpers import FIXTURES

FOUNDATION = str(FIXTURES / "foundation_v001.json")


def run(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command(*args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def test_schema_preview_prints_the_sql_and_executes_nothing(target, target_conn):
    output, error = run("schema_preview", FOUNDATION)
    assert error is None
    assert output.startswith("-- WF106 schema v001: Foundation")
    assert f'CREATE TABLE IF NOT EXISTS "{target}"."patients"' in output
    count = target_conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s", [target]
    ).fetchone()
    assert count == (0,)


def test_schema_preview_of_invalid_input_lists_the_errors(tmp_path, target):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"payload": {"schema_version": "1", "tables": []}}))
    output, error = run("schema_preview", str(path))
    assert error is not None and error.returncode == 1
    paths = {e["path"] for e in json.loads(output)["validation_errors"]}
    assert paths == {"payload.description", "payload.tables"}


@pytest.mark.django_db(transaction=True)
def test_schema_apply_applies_then_noops_and_stores_submissions(target, target_conn):
    output, error = run("schema_apply", FOUNDATION, "--actor", "ci-pipeline")
    assert error is None
    response = json.loads(output)
    assert response["result"]["status"] == "applied"
    ledger_id = response["result"]["primary_outputs"]["migration_log_id"]
    row = target_conn.execute(
        f"SELECT status, version, applied_by, metadata->>'claimed_actor_id' "
        f'FROM "{target}".schema_migrations WHERE id = %s',
        [ledger_id],
    ).fetchone()
    # The command line has no login: the ledger names the operating system's user, and the
    # request's `context.actor_id` is kept as claimed.
    assert row == ("success", "001", f"cli:{getpass.getuser()}", "user_admin_001")

    output, error = run("schema_apply", FOUNDATION)
    assert error is None
    assert json.loads(output)["result"]["status"] == "noop"

    submissions = list(SchemaSubmission.objects.order_by("created_at"))
    assert [(s.source, s.status) for s in submissions] == [("cli", "applied"), ("cli", "noop")]
    first = submissions[0]
    assert first.actor == "ci-pipeline"
    assert str(first.migration_log_id) == ledger_id
    assert first.generated_sql.startswith("-- WF106 schema v001")
    assert first.normalized_schema["version"] == "001"
    assert first.response == response
    assert list(SchemaEvent.objects.values_list("event_type", flat=True)) == [
        "schema_migration_applied"
    ]


@pytest.mark.django_db(transaction=True)
def test_schema_apply_says_what_happened_when_the_outcome_cannot_be_stored(
    target, target_conn, event_log_full
):
    output, error = run("schema_apply", FOUNDATION)
    assert error is not None and error.returncode == 1
    assert "the request was applied, but storing that failed" in str(error)
    assert "the event log is full" in str(error)
    assert json.loads(output)["result"]["status"] == "applied"
    assert SchemaSubmission.objects.get().status == "received"
    row = target_conn.execute(f'SELECT status FROM "{target}".schema_migrations').fetchone()
    assert row == ("success",)


@pytest.mark.django_db(transaction=True)
def test_schema_apply_to_an_unreachable_target_fails_with_a_message(target, monkeypatch, settings):
    from revos_schema import services

    monkeypatch.setattr(
        services, "target_conninfo", lambda: "host=127.0.0.1 port=1 dbname=nope user=nobody"
    )
    settings.WF106_TARGET_POOL_TIMEOUT_S = 0.5
    try:
        output, error = run("schema_apply", FOUNDATION)
    finally:
        services.close_target_pools()
    assert error is not None and error.returncode == 1
    assert str(error).startswith("target database unavailable")
    assert output == ""
    assert SchemaSubmission.objects.get().status == "failed"


@pytest.mark.django_db(transaction=True)
def test_schema_apply_dry_run_previews(target, target_conn):
    output, error = run("schema_apply", FOUNDATION, "--dry-run")
    assert error is None
    response = json.loads(output)
    assert response["result"]["status"] == "preview"
    assert "CREATE TABLE IF NOT EXISTS" in response["result"]["primary_outputs"]["sql"]
    tables = target_conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s", [target]
    ).fetchone()
    assert tables == (0,)


@pytest.mark.django_db(transaction=True)
def test_schema_apply_exits_non_zero_when_blocked(tmp_path, target):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"payload": {"schema_version": "1"}}))
    output, error = run("schema_apply", str(path))
    assert error is not None and error.returncode == 1
    assert json.loads(output)["result"]["status"] == "blocked"
    assert SchemaSubmission.objects.get().status == "blocked"


@pytest.mark.parametrize("content", ["{not json", None])
def test_unreadable_files_exit_with_2(tmp_path, content):
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)
    for command in ("schema_preview", "schema_apply"):
        _output, error = run(command, str(path))
        assert error is not None and error.returncode == 2
