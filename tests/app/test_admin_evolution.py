"""The admin and schema evolution: previews planned against the target, and the drift page."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connections
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import Prepared, run_schema_builder
from revos_schema import drafts
from revos_schema.models import SchemaSubmission
from revos_schema.services import close_target_pools
from tests.app.admin_helpers import DRAFTS_URL, SUBMISSIONS_URL, staff, two_table_envelope
from tests.builder.helpers import load_fixture

pytestmark = pytest.mark.django_db

DRIFT_URL = "/admin/revos_schema/drift/"


def apply(conn: psycopg.Connection[Any], target: str, name: str) -> None:
    outcome = run_schema_builder(load_fixture(name), conn, settings=ApplySettings(target))
    assert outcome.status == "applied", outcome.response["result"]


def text_of(body: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def add_patient(conn: psycopg.Connection[Any], target: str) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name) VALUES (gen_random_uuid(), 'a', 'b')"
        ).format(sql.Identifier(target, "patients"))
    )


@pytest.fixture
def unreachable_target(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the target at a port where no PostgreSQL listens (a real refused connection)."""
    settings.WF106_TARGET_POOL_TIMEOUT_S = 1
    target = connections["target"]
    monkeypatch.setattr(target, "settings_dict", {**target.settings_dict, "PORT": "1"})
    yield
    close_target_pools()


# --- a draft's preview ------------------------------------------------------------------------


def test_a_drafts_preview_shows_the_plan_against_the_target(client, target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    add_patient(target_conn, target)
    target_conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN legacy_code TEXT").format(
            sql.Identifier(target, "providers")
        )
    )
    draft = drafts.import_envelope(load_fixture("foundation_v002.json"))
    client.force_login(staff("author", "Authors"))

    page = client.get(f"{DRAFTS_URL}{draft.pk}/preview/")

    assert page.status_code == 200
    body = page.content.decode()
    shown = page.context["preview"]
    assert shown.fallback == "" and shown.plan.against_target
    assert "Planned against the target database as it is now." in body
    # Each operation is a row with its risk badge, rule, reason and where it runs.
    rows = re.findall(r'<tr class="wf106-op wf106-op-(\w+)">(.*?)</tr>', body, re.S)
    texts = [(risk, " ".join(text_of(row).split())) for risk, row in rows]
    assert ("safe", "1 add column 'email' TEXT to 'patients' safe in the transaction") in texts
    index = next(text for _, text in texts if "idx_patients_mrn" in text)
    assert "'patients' holds rows: built CONCURRENTLY after COMMIT" in index
    assert index.endswith("after COMMIT")
    assert not any("create table 'tenants'" in text for _, text in texts)
    assert '<span class="wf106-risk wf106-risk-safe">safe</span>' in body
    # A draft is always held for an approver.
    assert shown.plan.decision == "hold"
    assert 'class="wf106-decision-badge wf106-decision-hold">hold</span>' in body
    assert "Column providers.legacy_code is in the database but not in the payload" in body
    # The SQL, highlighted, is the plan's: the new column, then the concurrent index after COMMIT.
    sql_text = text_of(str(shown.sql_html))
    assert f'ALTER TABLE "{target}"."patients" ADD COLUMN IF NOT EXISTS "email" TEXT' in sql_text
    assert "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS" in sql_text
    assert "then the steps after COMMIT one at a time" in body


def test_a_drafts_preview_names_the_rule_of_a_risky_operation(client, target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    envelope = load_fixture("foundation_v001.json")
    envelope["payload"]["schema_version"] = "001b"
    patients = next(t for t in envelope["payload"]["tables"] if t["name"] == "patients")
    patients["columns"].append({"name": "code", "type": "TEXT", "not_null": True})
    add_patient(target_conn, target)
    draft = drafts.import_envelope(envelope)
    client.force_login(staff("author", "Authors"))

    page = client.get(f"{DRAFTS_URL}{draft.pk}/preview/")

    body = page.content.decode()
    assert 'class="wf106-op wf106-op-review wf106-op-blocked"' in body
    assert "<code>adding-required-field</code>" in body
    assert "Adding the NOT NULL column &#x27;code&#x27; without a default" in body
    assert page.context["preview"].plan.decision == "block"


def test_a_drafts_preview_shows_squawks_findings_on_its_sql(client, target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    envelope = load_fixture("foundation_v001.json")
    envelope["payload"]["schema_version"] = "001c"
    patients = next(t for t in envelope["payload"]["tables"] if t["name"] == "patients")
    for column in patients["columns"]:
        if column["name"] == "mrn":
            column["type"] = "BIGINT"
    draft = drafts.import_envelope(envelope)
    client.force_login(staff("author", "Authors"))

    page = client.get(f"{DRAFTS_URL}{draft.pk}/preview/")

    findings = page.context["preview"].plan.squawk
    assert [f.rule for f in findings] == ["changing-column-type"]
    assert findings[0].statement.endswith('ALTER COLUMN "mrn" TYPE BIGINT USING "mrn"::BIGINT')
    section = page.content.decode().split('id="wf106-squawk"')[1]
    assert "<code>changing-column-type</code>: Changing a column type" in section


def test_a_drafts_preview_falls_back_to_a_first_apply_without_the_target(
    client, target, unreachable_target
):
    draft = drafts.import_envelope(load_fixture("foundation_v002.json"))
    client.force_login(staff("author", "Authors"))

    page = client.get(f"{DRAFTS_URL}{draft.pk}/preview/")

    assert page.status_code == 200
    shown = page.context["preview"]
    assert shown.fallback.startswith("The target database could not be read (")
    assert "The plan below is made against an empty database" in shown.fallback
    assert 'id="wf106-fallback"' in page.content.decode()
    assert not shown.plan.against_target and not shown.target_checked
    prepared = drafts.plan(draft)
    assert isinstance(prepared, Prepared)
    assert shown.sql == prepared.migration.script  # the offline preview, as before


# --- a held submission's preview --------------------------------------------------------------


def held_v002(author: User) -> SchemaSubmission:
    draft = drafts.import_envelope(load_fixture("foundation_v002.json"), user=author)
    _, submission = drafts.submit(draft, user=author)
    assert submission.status == "pending_approval"
    return submission


def test_a_held_submission_is_planned_against_the_target_again(client, target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    submission = held_v002(staff("author", "Authors"))
    client.force_login(staff("approver", "Approvers"))

    page = client.get(f"{SUBMISSIONS_URL}{submission.pk}/change/")

    body = page.content.decode()
    shown = page.context["preview"]
    assert shown.plan.against_target
    assert shown.sql == submission.generated_sql  # the plan that was held, still
    assert "add column &#x27;email&#x27; TEXT to &#x27;patients&#x27;" in body
    assert "Once approved: this plan is applied." in body
    assert "The target database changed since this request was held" not in body

    # Someone adds the column by hand: the plan now differs from the one that was held.
    target_conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN email TEXT").format(sql.Identifier(target, "patients"))
    )

    page = client.get(f"{SUBMISSIONS_URL}{submission.pk}/change/")

    body = page.content.decode()
    assert "The target database changed since this request was held" in body
    operations = [op.description for op in page.context["preview"].plan.operations]
    assert not any("'email'" in description for description in operations)
    assert page.context["preview"].sql != submission.generated_sql


def test_a_held_submission_shows_the_held_plan_without_the_target(
    client, request, target, target_conn
):
    apply(target_conn, target, "foundation_v001.json")
    submission = held_v002(staff("author", "Authors"))
    client.force_login(staff("approver", "Approvers"))
    request.getfixturevalue("unreachable_target")

    page = client.get(f"{SUBMISSIONS_URL}{submission.pk}/change/")

    shown = page.context["preview"]
    assert shown.fallback.startswith("The target database could not be read (")
    assert shown.fallback.endswith("The plan below is the one made when the request was held.")
    assert shown.sql == submission.generated_sql
    assert "Planned against the target database when the request was held." in text_of(
        page.content.decode()
    )
    assert "add column 'email' TEXT to 'patients'" in text_of(page.content.decode())


# --- the drift page ---------------------------------------------------------------------------


def test_the_drift_page_needs_a_login_and_the_view_permission(client, target):
    page = client.get(DRIFT_URL)
    assert page.status_code == 302
    assert page["Location"].startswith("/admin/login/?next=/admin/revos_schema/drift/")

    client.force_login(staff("nobody"))
    assert client.get(DRIFT_URL).status_code == 403

    client.force_login(User.objects.create_user("customer", password="x"))  # not staff
    assert client.get(DRIFT_URL).status_code == 302


def test_the_drift_page_reports_what_schema_verify_does(client, target, target_conn):
    apply(target_conn, target, "foundation_v001.json")
    apply(target_conn, target, "foundation_v002.json")
    client.force_login(staff("viewer", "Viewers"))

    page = client.get(DRIFT_URL)

    assert page.status_code == 200
    body = page.content.decode()
    assert page.context["report"].ok
    assert f"No drift in the target schema &#x27;{target}&#x27;" in body
    assert "<code>001</code>, <code>002</code>" in body
    assert "Differences (0)" in body

    target_conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(target, "idx_users_email")))
    target_conn.execute(
        sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(
            sql.Identifier(target, "patients")
        )
    )

    page = client.get(DRIFT_URL)

    body = text_of(page.content.decode())
    assert "Drift found" in body and "Differences (2)" in body
    assert "Row level security is disabled on 'patients'" in body
    assert "The index 'idx_users_email' of 'users' is missing, invalid or different" in body


def test_the_drift_page_says_when_the_target_cannot_be_reached(client, target, unreachable_target):
    client.force_login(staff("viewer", "Viewers"))

    page = client.get(DRIFT_URL)

    assert page.status_code == 200
    assert page.context["problem"].startswith("The target database could not be verified:")
    assert 'id="wf106-drift-problem"' in page.content.decode()


def test_the_drift_page_is_linked_for_those_who_may_read_it(client, target):
    client.force_login(staff("viewer", "Viewers"))
    assert 'id="wf106-drift-index-link"' in client.get("/admin/").content.decode()
    assert 'id="wf106-drift-link"' in client.get(SUBMISSIONS_URL).content.decode()

    client.force_login(staff("drafter", superuser=False))
    assert 'id="wf106-drift-index-link"' not in client.get("/admin/").content.decode()


def test_approving_while_the_target_is_down_decides_nothing(client, target, request):
    draft = drafts.import_envelope(two_table_envelope("042"), user=staff("author", "Authors"))
    _, submission = drafts.submit(draft, user=draft.created_by)
    client.force_login(staff("approver", "Approvers"))
    request.getfixturevalue("unreachable_target")

    response = client.post(
        f"/admin/revos_schema/schemasubmission/{submission.pk}/approve/", follow=True
    )

    assert [str(m) for m in response.context["messages"]] == [
        "The target database cannot be reached: nothing was applied. Nothing was decided "
        "either; the submission still waits for an approver."
    ]
    submission.refresh_from_db()
    assert (submission.status, submission.decision) == ("pending_approval", "")
