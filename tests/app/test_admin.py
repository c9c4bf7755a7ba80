"""The read-only admin pages, through the test client against the real test database."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections

from builder.db import ledger
from revos_schema.models import SchemaEvent, SchemaPlan, SchemaSubmission

BOTH_DATABASES = ["default", "target"]
LEDGER_URL = "/admin/revos_schema/migrationledgerentry/"
SUBMISSIONS_URL = "/admin/revos_schema/schemasubmission/"


@pytest.fixture
def submission() -> SchemaSubmission:
    script = 'CREATE TABLE "patients" ();'
    plan = SchemaPlan.objects.create(
        digest=SchemaPlan.digest_of("ab" * 32, script),
        normalized_schema={"version": "v001", "tables": []},
        generated_sql=script,
    )
    return SchemaSubmission.objects.create(
        source="api",
        envelope={"payload": {"schema_version": "v001"}},
        schema_version="v001",
        schema_hash="ab" * 32,
        status="applied",
        http_status=200,
        plan=plan,
    )


@pytest.mark.django_db
def test_submissions_list_and_detail_render(admin_client, submission):
    listing = admin_client.get(SUBMISSIONS_URL, {"status__exact": "applied", "q": "v001"})
    detail = admin_client.get(f"{SUBMISSIONS_URL}{submission.pk}/change/")

    assert listing.status_code == 200
    assert "v001" in listing.content.decode()
    assert detail.status_code == 200
    assert "CREATE TABLE" in detail.content.decode()
    assert 'name="_save"' not in detail.content.decode()  # view only


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model", ["schemasubmission", "schemaplan", "schemaevent", "migrationledgerentry"]
)
def test_nobody_can_add_records_by_hand(admin_client, model):
    assert admin_client.get(f"/admin/revos_schema/{model}/add/").status_code == 403


@pytest.mark.django_db
def test_plans_list_with_their_submission_count_and_cannot_be_deleted(admin_client, submission):
    url = f"/admin/revos_schema/schemaplan/{submission.plan_id}/"

    listing = admin_client.get("/admin/revos_schema/schemaplan/")
    detail = admin_client.get(f"{url}change/")
    deleted = admin_client.post(f"{url}delete/", {"post": "yes"})

    assert listing.status_code == 200
    assert '<td class="field-submission_count">1</td>' in listing.content.decode()
    assert "CREATE TABLE" in detail.content.decode()
    assert deleted.status_code == 403
    assert SchemaPlan.objects.filter(pk=submission.plan_id).exists()


@pytest.mark.django_db
def test_nobody_can_change_or_delete_a_submission(admin_client, submission):
    url = f"{SUBMISSIONS_URL}{submission.pk}/"

    changed = admin_client.post(f"{url}change/", {"status": "failed"})
    deleted = admin_client.post(f"{url}delete/", {"post": "yes"})

    assert deleted.status_code == 403
    assert changed.status_code == 403
    submission.refresh_from_db()
    assert submission.status == "applied"


@pytest.mark.django_db
def test_staff_need_the_view_permission(client, submission):
    user = User.objects.create_user("operator", password="pw-for-tests", is_staff=True)
    client.force_login(user)
    assert client.get(SUBMISSIONS_URL).status_code == 403

    user.user_permissions.add(Permission.objects.get(codename="view_schemasubmission"))

    assert client.get(SUBMISSIONS_URL).status_code == 200


@pytest.mark.django_db
def test_events_list_renders(admin_client, submission):
    SchemaEvent.objects.create(event_type="schema_migration_applied", submission=submission)

    response = admin_client.get("/admin/revos_schema/schemaevent/")

    assert response.status_code == 200
    assert "schema_migration_applied" in response.content.decode()


@pytest.mark.django_db(databases=BOTH_DATABASES)
def test_ledger_page_explains_a_missing_ledger_table(admin_client, empty_target_schema):
    response = admin_client.get(LEDGER_URL, {"status__exact": "success", "q": "v001"})

    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert any("has no schema_migrations table yet" in m for m in messages)
    assert response.context["cl"].result_count == 0


@pytest.mark.django_db(databases=BOTH_DATABASES)
def test_ledger_page_lists_the_builders_rows(admin_client, ledger_schema):
    row = ledger.NewLedgerRow(
        version="v001",
        description="first",
        applied_by="ops",
        checksum="c" * 64,
        status="success",
        sql_script="SELECT 1;",
        schema_hash="f00d" * 16,
        idempotency_key="idem:wf106:acme:v001:" + "f00d" * 16,
        tenant_id="acme",
        workflow_run_id=None,
        metadata={},
    )
    row_id, _ = ledger.insert_row(connections["target"].connection, ledger_schema, row)

    listing = admin_client.get(LEDGER_URL, {"q": "f00d"})
    detail = admin_client.get(f"{LEDGER_URL}{row_id}/change/")

    assert listing.status_code == 200
    assert not list(listing.context["messages"])
    assert listing.context["cl"].result_count == 1
    assert detail.status_code == 200
    assert "SELECT 1;" in detail.content.decode()
