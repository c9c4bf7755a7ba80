"""The app's models on the real test database; the ledger model on the builder's own table."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.db.models import ProtectedError

from builder.db import ledger
from revos_schema import services
from revos_schema.models import MigrationLedgerEntry, SchemaEvent, SchemaPlan, SchemaSubmission

BOTH_DATABASES = ["default", "target"]


@pytest.mark.django_db
def test_submission_round_trips_its_json():
    envelope = {
        "meta": {"tenant_id": "acme", "workflow_run_id": None},
        "payload": {
            "schema_version": "v001",
            "tables": [{"name": "Café", "columns": [{"name": "n", "type": "NUMERIC(12,2)"}]}],
            "dry_run": False,
            "ratio": 0.5,
        },
    }
    errors = [{"path": "payload.tables[0].name", "code": "invalid_name", "message": "bad"}]
    created = SchemaSubmission.objects.create(
        source=SchemaSubmission.Source.API,
        envelope=envelope,
        validation_errors=errors,
        response={"result": {"status": "blocked"}},
        status=SchemaSubmission.Status.BLOCKED,
        http_status=400,
    )

    loaded = SchemaSubmission.objects.get(pk=created.pk)

    assert loaded.envelope == envelope
    assert loaded.validation_errors == errors
    assert loaded.response == {"result": {"status": "blocked"}}
    assert loaded.normalized_schema is None
    assert (loaded.status, loaded.http_status) == ("blocked", 400)


@pytest.mark.django_db
def test_submission_defaults_fit_a_request_that_was_just_received():
    submission = SchemaSubmission.objects.create(source="cli", envelope={})

    assert submission.status == SchemaSubmission.Status.RECEIVED
    assert submission.validation_errors == []
    assert submission.tenant_id == submission.generated_sql == submission.error_message == ""
    assert isinstance(submission.id, uuid.UUID)
    assert submission.created_at is not None
    assert str(submission) == "(no version): received (cli)"


@pytest.mark.django_db
def test_submissions_are_listed_newest_first():
    first = SchemaSubmission.objects.create(source="api", envelope={}, schema_version="v001")
    second = SchemaSubmission.objects.create(source="api", envelope={}, schema_version="v002")

    assert list(SchemaSubmission.objects.all()[:2]) == [second, first]


@pytest.mark.django_db
def test_custom_permissions_exist():
    names = dict(
        Permission.objects.filter(content_type__app_label="revos_schema").values_list(
            "codename", "name"
        )
    )

    assert names["submit_schema"] == "Can submit schemas through the webhook"
    assert names["approve_schema"] == "Can approve or reject pending schema migrations"


@pytest.mark.django_db
def test_a_user_granted_submit_schema_has_it():
    user = User.objects.create_user("svc")
    user.user_permissions.add(Permission.objects.get(codename="submit_schema"))

    user = User.objects.get(pk=user.pk)  # a fresh object: permissions are cached per instance

    assert user.has_perm("revos_schema.submit_schema")
    assert not user.has_perm("revos_schema.approve_schema")


@pytest.mark.django_db
def test_events_outlive_their_submission():
    submission = SchemaSubmission.objects.create(source="api", envelope={})
    event = SchemaEvent.objects.create(
        event_type="schema_migration_applied", submission=submission, payload={"version": "v1"}
    )
    assert list(submission.events.all()) == [event]

    submission.delete()

    event.refresh_from_db()
    assert event.submission is None
    assert event.payload == {"version": "v1"}


def _ledger_row(version: str, status: str, **overrides: Any) -> ledger.NewLedgerRow:
    values: dict[str, Any] = {
        "version": version,
        "description": f"schema {version}",
        "applied_by": "ops@example.com",
        "checksum": "c" * 64,
        "status": status,
        "sql_script": 'CREATE TABLE "t" ();',
        "schema_hash": "h" * 64,
        "idempotency_key": f"idem:wf106:acme:{version}:{'h' * 64}",
        "tenant_id": "acme",
        "workflow_run_id": "run-1",
        "metadata": {"tables": ["t"]},
        "execution_ms": 12,
    }
    return ledger.NewLedgerRow(**{**values, **overrides})


@pytest.mark.django_db(databases=BOTH_DATABASES)
def test_ledger_model_reads_rows_the_builder_wrote(ledger_schema):
    raw = connections["target"].connection
    applied_id, _ = ledger.insert_row(raw, ledger_schema, _ledger_row("v001", "success"))
    ledger.insert_row(
        raw,
        ledger_schema,
        _ledger_row("v002", "failed", error_message="boom", applied_by=None, tenant_id=None),
    )

    entries = list(MigrationLedgerEntry.objects.order_by("version"))

    assert [(e.version, e.status) for e in entries] == [("v001", "success"), ("v002", "failed")]
    applied, failed = entries
    assert str(applied.id) == applied_id
    assert applied.metadata == {"tables": ["t"]}
    assert applied.execution_ms == 12
    assert applied.applied_at is not None
    assert (failed.error_message, failed.applied_by, failed.tenant_id) == ("boom", None, None)
    assert MigrationLedgerEntry.table_exists()


@pytest.mark.django_db(databases=BOTH_DATABASES)
def test_ledger_model_matches_the_builders_table(ledger_schema):
    with connections["target"].cursor() as cursor:
        cursor.execute(
            "SELECT column_name, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            [ledger_schema, ledger.LEDGER_TABLE],
        )
        table = dict(cursor.fetchall())

    model = {f.column: f.null for f in MigrationLedgerEntry._meta.concrete_fields}

    assert model == table


@pytest.mark.django_db(databases=BOTH_DATABASES)
def test_ledger_table_is_missing_on_a_fresh_target(empty_target_schema):
    assert not MigrationLedgerEntry.table_exists()


def test_ledger_model_is_not_managed_by_django_migrations():
    assert MigrationLedgerEntry._meta.managed is False
    assert MigrationLedgerEntry._meta.db_table == ledger.LEDGER_TABLE


@pytest.mark.django_db
def test_a_json_null_request_is_stored_as_json_null(target):
    outcome, submission = services.submit_envelope(None, source="cli")

    assert outcome.status == "blocked"
    loaded = SchemaSubmission.objects.get(pk=submission.pk)
    assert loaded.envelope is None  # JSON null, not SQL NULL
    assert SchemaSubmission.objects.filter(envelope__isnull=True).count() == 0


@pytest.mark.django_db
def test_a_plan_in_use_cannot_be_deleted():
    plan = SchemaPlan.objects.create(
        digest=SchemaPlan.digest_of("h", "x"), normalized_schema={}, generated_sql="x"
    )
    submission = SchemaSubmission.objects.create(source="cli", envelope={}, plan=plan)

    with pytest.raises(ProtectedError):
        plan.delete()
    assert SchemaSubmission.objects.get(pk=submission.pk).normalized_schema == {}
