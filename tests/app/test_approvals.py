"""Held submissions and their approval: the API's approve and reject, four eyes, the plan check."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from psycopg import sql
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from revos_schema.models import SchemaEvent, SchemaPlan, SchemaSubmission
from tests.builder.helpers import PATIENTS, envelope

URL = "/wf106/schema-builder"
pytestmark = pytest.mark.django_db


def account(name: str, *codenames: str, superuser: bool = False) -> User:
    user = User.objects.create_user(name, is_superuser=superuser)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def client_for(user: User) -> APIClient:
    api = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return api


def post(api: APIClient, url: str, body: Any = None):
    data = None if body is None else json.dumps(body)
    return api.post(url, data=data, content_type="application/json")


def review(tables: list[dict[str, Any]] | None = None, version: str = "001") -> dict[str, Any]:
    request = envelope(tables or [PATIENTS], version=version)
    request["context"]["validation_profile"] = "review"
    return request


@pytest.fixture
def author() -> User:
    return account("svc-author", "submit_schema")


@pytest.fixture
def approver() -> User:
    return account("ops-approver", "approve_schema")


def hold(author: User, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """Submit `request` (a review of patients by default) as `author`; return its result."""
    response = post(client_for(author), URL, request or review())
    assert response.status_code == 202, response.json()
    return response.json()["result"]


def tables_in(target_conn, schema: str) -> list[str]:
    rows = target_conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", [schema]
    ).fetchall()
    return [r[0] for r in rows]


def test_a_review_request_is_held_with_its_plan_and_touches_nothing(target, target_conn, author):
    result = hold(author)

    assert result["status"] == "pending_approval"
    assert result["primary_outputs"]["sql"].startswith("-- WF106 schema v001")
    stored = SchemaSubmission.objects.get(pk=result["submission_id"])
    assert (stored.status, stored.http_status, stored.submitted_by) == (
        "pending_approval",
        202,
        author,
    )
    assert stored.generated_sql == result["primary_outputs"]["sql"]
    assert stored.schema_hash == result["primary_outputs"]["schema_hash"]
    assert tables_in(target_conn, target) == []  # not even the ledger
    assert list(SchemaEvent.objects.values_list("event_type", flat=True)) == [
        "schema_migration_pending_approval"
    ]


def test_the_setting_holds_every_request(target, target_conn, settings, author):
    settings.WF106_REQUIRE_APPROVAL = True
    result = hold(author, envelope([PATIENTS]))
    assert result["status"] == "pending_approval"
    assert tables_in(target_conn, target) == []


def test_a_dry_run_of_a_review_request_is_a_preview(target, author):
    request = review()
    request["payload"]["dry_run"] = True
    response = post(client_for(author), URL, request)
    assert response.status_code == 200
    assert response.json()["result"]["status"] == "preview"


def test_approval_applies_the_stored_plan_and_records_the_decision(
    target, target_conn, author, approver
):
    held = hold(author)
    url = f"{held['submission_url']}/approve"

    response = post(client_for(approver), url, {"reason": "reviewed with the clinic"})

    assert response.status_code == 200, response.json()
    result = response.json()["result"]
    assert result["status"] == "applied"
    assert result["decision"]["by"] == "ops-approver"
    assert result["decision"]["action"] == "approved"
    assert result["decision"]["reason"] == "reviewed with the clinic"
    assert tables_in(target_conn, target) == ["patients", "schema_migrations"]
    script = target_conn.execute(
        sql.SQL("SELECT sql_script FROM {}").format(sql.Identifier(target, "schema_migrations"))
    ).fetchone()
    stored = SchemaSubmission.objects.get(pk=held["submission_id"])
    assert script == (stored.generated_sql,)  # exactly what was shown
    assert (stored.status, stored.decision, stored.decided_by) == ("applied", "approved", approver)
    assert stored.decided_at is not None
    assert list(
        SchemaEvent.objects.filter(submission=stored)
        .order_by("created_at")
        .values_list("event_type", flat=True)
    ) == [
        "schema_migration_pending_approval",
        "schema_migration_approved",
        "schema_migration_applied",
    ]
    # The status endpoint says who decided, to the submitter and to the approver.
    for user in (author, approver):
        status = client_for(user).get(held["submission_url"]).json()["result"]
        assert status["status"] == "applied"
        assert status["decision"] == result["decision"]


def test_a_rejection_needs_a_reason_and_runs_nothing(target, target_conn, author, approver):
    held = hold(author)
    url = f"{held['submission_url']}/reject"
    api = client_for(approver)

    for body in (None, {}, {"reason": "  "}):
        missing = post(api, url, body)
        assert missing.status_code == 400
        assert "reason" in missing.json()["result"]["summary"]
    assert post(api, url, {"reason": 42}).status_code == 400

    response = post(api, url, {"reason": "the MRN column must be unique"})

    assert response.status_code == 200
    result = response.json()["result"]
    assert result["status"] == "rejected"
    assert result["decision"]["action"] == "rejected"
    assert result["decision"]["reason"] == "the MRN column must be unique"
    stored = SchemaSubmission.objects.get(pk=held["submission_id"])
    assert (stored.status, stored.http_status, stored.decided_by) == ("rejected", 200, approver)
    assert tables_in(target_conn, target) == []
    status = client_for(author).get(held["submission_url"]).json()["result"]
    assert (status["status"], status["decision"]["by"]) == ("rejected", "ops-approver")


@pytest.mark.parametrize("first", ["approve", "reject"])
@pytest.mark.parametrize("second", ["approve", "reject"])
def test_a_decided_submission_cannot_be_decided_again(target, author, approver, first, second):
    held = hold(author)
    api = client_for(approver)
    assert post(api, f"{held['submission_url']}/{first}", {"reason": "ok"}).status_code == 200

    again = post(api, f"{held['submission_url']}/{second}", {"reason": "again"})

    assert again.status_code == 409
    assert again.json()["result"]["status"] == "conflict"
    assert "not waiting for a decision" in again.json()["result"]["summary"]


def test_a_submission_that_did_not_wait_cannot_be_decided(target, author, approver):
    response = post(client_for(author), URL, envelope([PATIENTS]))
    assert response.json()["result"]["status"] == "applied"
    url = f"{response.json()['result']['submission_url']}/approve"
    assert post(client_for(approver), url).status_code == 409


# Who may decide: (the decider, whether it is the submitter, WF106_ALLOW_SELF_APPROVAL) -> HTTP.
@pytest.mark.parametrize(
    ("who", "allow_self", "expected"),
    [
        ("viewer", False, 403),
        ("author", False, 403),
        ("approver", False, 200),
        ("approver-group", False, 200),
        ("submitter-approver", False, 403),
        ("submitter-approver", True, 200),
        ("submitter-superuser", False, 403),
        ("submitter-superuser", True, 200),
        ("other-superuser", False, 200),
    ],
)
@pytest.mark.parametrize("action", ["approve", "reject"])
def test_the_permission_matrix(target, target_conn, settings, who, allow_self, expected, action):
    settings.WF106_ALLOW_SELF_APPROVAL = allow_self
    submitter = account(
        "submitter",
        "submit_schema",
        *(["approve_schema"] if who == "submitter-approver" else []),
        superuser=who == "submitter-superuser",
    )
    if who.startswith("submitter"):
        decider = submitter
    elif who == "approver-group":
        decider = account("grouped")
        call_command("setup_roles", stdout=io.StringIO())
        decider.groups.add(Group.objects.get(name="Approvers"))
    else:
        decider = account(
            who,
            *{
                "viewer": ["view_schemasubmission"],
                "author": ["submit_schema"],
                "approver": ["approve_schema"],
                "other-superuser": [],
            }[who],
            superuser=who == "other-superuser",
        )
    held = hold(submitter)

    response = post(client_for(decider), f"{held['submission_url']}/{action}", {"reason": "r"})

    assert response.status_code == expected, response.json()
    stored = SchemaSubmission.objects.get(pk=held["submission_id"])
    if expected == 403:
        assert stored.status == "pending_approval" and not stored.decision
        assert tables_in(target_conn, target) == []
    else:
        assert stored.status == ("applied" if action == "approve" else "rejected")


def test_an_approval_is_refused_when_the_plan_is_no_longer_what_was_shown(
    target, target_conn, author, approver
):
    held = hold(author)
    stored = SchemaSubmission.objects.get(pk=held["submission_id"])
    # The builder would now make another plan for this request (as after an upgrade): the
    # stored plan, the one that was shown, is not it.
    shown = SchemaPlan.objects.create(
        digest=SchemaPlan.digest_of(stored.schema_hash, "-- an older plan"),
        normalized_schema=stored.normalized_schema,
        generated_sql="-- an older plan",
    )
    SchemaSubmission.objects.filter(pk=stored.pk).update(plan=shown)

    response = post(client_for(approver), f"{held['submission_url']}/approve")

    assert response.status_code == 409
    assert "differs from the approved plan" in response.json()["result"]["summary"]
    assert tables_in(target_conn, target) == []
    assert SchemaSubmission.objects.get(pk=stored.pk).status == "pending_approval"


def test_deciding_on_an_unknown_submission_is_404(target, approver):
    url = f"{URL}/submissions/00000000-0000-0000-0000-000000000000/approve"
    response = post(client_for(approver), url)
    assert response.status_code == 404
    assert response.json()["result"]["status"] == "not_found"


def test_deciding_needs_a_token(target, author):
    held = hold(author)
    response = APIClient().post(f"{held['submission_url']}/approve")
    assert response.status_code == 401


def test_setup_roles_creates_the_groups_once_and_restores_their_permissions():
    out = io.StringIO()
    call_command("setup_roles", stdout=out)
    assert "Created the group Approvers" in out.getvalue()
    approvers = Group.objects.get(name="Approvers")
    view_all = {
        "view_schemasubmission",
        "view_schemaplan",
        "view_schemaevent",
        "view_eventdelivery",
        "view_eventreceiver",
        "view_migrationledgerentry",
        "view_schemadraft",
        "view_drafttable",
        "view_draftcolumn",
        "view_draftindex",
    }
    assert {p.codename for p in approvers.permissions.all()} == {
        "approve_schema",
        "resend_schemaevent",
        *view_all,
    }
    assert {p.codename for p in Group.objects.get(name="Viewers").permissions.all()} == view_all
    # Authors write drafts (a draft and its tables, columns and indexes) and submit them.
    assert {p.codename for p in Group.objects.get(name="Authors").permissions.all()} == {
        "submit_schema",
        *view_all,
        *(
            f"{action}_{model}"
            for model in ("schemadraft", "drafttable", "draftcolumn", "draftindex")
            for action in ("add", "change", "delete")
        ),
    }
    assert (
        not Group.objects.get(name="Viewers")
        .permissions.filter(codename__in=["submit_schema", "approve_schema"])
        .exists()
    )
    approvers.permissions.add(Permission.objects.get(codename="submit_schema"))

    again = io.StringIO()
    call_command("setup_roles", stdout=again)
    assert "Updated the group Approvers: -revos_schema.submit_schema." in again.getvalue()
    assert "The group Viewers is up to date." in again.getvalue()
    assert Group.objects.count() == 3


def test_the_ledger_names_the_submitter_and_the_approver(target, target_conn, author, approver):
    held = hold(author)

    response = post(client_for(approver), f"{held['submission_url']}/approve")

    assert response.status_code == 200, response.json()
    row_id = response.json()["result"]["primary_outputs"]["migration_log_id"]
    applied_by, metadata = target_conn.execute(
        sql.SQL("SELECT applied_by, metadata FROM {} WHERE id = %s").format(
            sql.Identifier(target, "schema_migrations")
        ),
        [row_id],
    ).fetchone()
    assert (applied_by, metadata["approved_by"]) == ("svc-author", "ops-approver")
