"""Who may call the webhook: the one-query permission check agrees with Django's has_perm, and
a request costs few app-database queries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.test import APIClient

from revos_schema.api import WebhookTokenAuthentication
from revos_schema.models import SchemaPlan, SchemaSubmission
from tests.builder.helpers import PATIENTS, envelope, load_fixture

URL = "/wf106/schema-builder"
pytestmark = pytest.mark.django_db


def permission(codename: str) -> Permission:
    return Permission.objects.get(content_type__app_label="revos_schema", codename=codename)


def account(kind: str) -> User:
    """A user of one `kind`: how (or whether) it holds submit_schema."""
    user = User.objects.create_user(f"svc-{kind}", is_superuser=kind.startswith("superuser"))
    if kind in ("direct", "direct-and-group"):
        user.user_permissions.add(permission("submit_schema"))
    if kind in ("group", "direct-and-group"):
        group = Group.objects.create(name=f"submitters-{kind}")
        group.permissions.add(permission("submit_schema"))
        user.groups.add(group)
    if kind == "other-permission":
        user.user_permissions.add(permission("approve_schema"))
        group = Group.objects.create(name="approvers")
        group.permissions.add(permission("approve_schema"))
        user.groups.add(group)
    if kind == "empty-group":
        user.groups.add(Group.objects.create(name="nothing"))
    return user


def client_for(user: User) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return api


def call(user: User, body: object):
    return client_for(user).post(URL, data=json.dumps(body), content_type="application/json")


KINDS = [
    "direct",
    "group",
    "direct-and-group",
    "superuser",
    "none",
    "other-permission",
    "empty-group",
]


@pytest.mark.parametrize("kind", KINDS)
def test_the_permission_query_grants_exactly_what_has_perm_grants(target, kind):
    user = account(kind)
    expected = User.objects.get(pk=user.pk).has_perm("revos_schema.submit_schema")
    assert expected == (kind not in ("none", "other-permission", "empty-group"))

    response = call(user, envelope([PATIENTS], dry_run=True))

    assert response.status_code == (200 if expected else 403)
    assert SchemaSubmission.objects.exists() == expected


@pytest.mark.parametrize("kind", KINDS)
def test_without_the_tokens_answer_the_permission_query_still_grants_what_has_perm_grants(
    target, kind
):
    user = account(kind)
    expected = User.objects.get(pk=user.pk).has_perm("revos_schema.submit_schema")
    api = APIClient()
    api.force_authenticate(user=user)  # no token: the permission is read in a query of its own
    body = json.dumps(envelope([PATIENTS], dry_run=True))
    with CaptureQueriesContext(connection) as queries:
        response = api.post(URL, data=body, content_type="application/json")

    assert response.status_code == (200 if expected else 403)
    checks = [q["sql"] for q in queries.captured_queries if "holds_permission" in q["sql"]]
    assert len(checks) == (0 if kind == "superuser" else 1)


@pytest.mark.parametrize("kind", ["direct", "superuser"])
def test_an_inactive_account_is_refused_even_with_the_permission(target, kind):
    user = account(kind)
    user.is_active = False
    user.save()
    assert call(user, envelope([PATIENTS])).status_code == 401


@pytest.mark.parametrize("kind", ["group", "none"])
def test_with_another_authentication_backend_has_perm_decides(target, settings, kind):
    settings.AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        "django.contrib.auth.backends.AllowAllUsersModelBackend",
    ]
    api = client_for(account(kind))
    body = json.dumps(envelope([PATIENTS], dry_run=True))
    with CaptureQueriesContext(connection) as queries:
        response = api.post(URL, data=body, content_type="application/json")
    assert response.status_code == (200 if kind == "group" else 403)
    assert not any("holds_permission" in q["sql"] for q in queries.captured_queries)


def app_queries(client_call) -> tuple[Any, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = client_call()
    return response, [q["sql"] for q in queries.captured_queries]


# Not in a test transaction: the queries run as in production (autocommit; BEGIN and COMMIT are
# captured as queries too).
@pytest.mark.django_db(transaction=True)
def test_a_noop_costs_two_app_queries_and_writes_its_submission_once(target):
    api = client_for(account("group"))
    body = json.dumps(load_fixture("foundation_v001.json"))

    def send():
        return api.post(URL, data=body, content_type="application/json")

    applied, applied_sql = app_queries(send)
    noop, noop_sql = app_queries(send)

    assert applied.json()["result"]["status"] == "applied"
    assert noop.json()["result"]["status"] == "noop"
    # An apply: the token with the permission, the submission stored as `received` (with its
    # plan) before the target commits, then the submission's outcome and the event in one
    # statement (in autocommit, one transaction).
    assert [q.split()[0] for q in applied_sql] == ["SELECT", "WITH", "WITH"]
    assert "authtoken_token" in applied_sql[0] and "holds_permission" in applied_sql[0]
    outcome = applied_sql[2]
    assert "UPDATE" in outcome and 'INSERT INTO "revos_schema_schemaevent"' in outcome
    # The request and its plan (schema, SQL) are written once, with the `received` row.
    assert '"envelope"' not in outcome and '"generated_sql"' not in outcome
    assert 'INSERT INTO "revos_schema_schemaplan"' in applied_sql[1]
    assert 'INSERT INTO "revos_schema_schemasubmission"' in applied_sql[1]
    # A noop never writes to the target: the submission is written once, in its final state,
    # without its plan's text (the process saw that plan stored: the two share it).
    assert [q.split()[0] for q in noop_sql] == ["SELECT", "INSERT"]
    assert "revos_schema_schemaplan" not in noop_sql[1]
    stored = SchemaSubmission.objects.get(pk=noop.json()["result"]["submission_id"])
    assert stored.status == "noop"
    assert stored.http_status == 200
    assert stored.response["result"]["status"] == "noop"
    first = SchemaSubmission.objects.get(pk=applied.json()["result"]["submission_id"])
    assert stored.plan_id == first.plan_id
    assert SchemaPlan.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_remembered_plan_deleted_by_hand_is_stored_again(target):
    api = client_for(account("group"))
    body = json.dumps(load_fixture("foundation_v001.json"))

    def send():
        return api.post(URL, data=body, content_type="application/json").json()["result"]

    assert send()["status"] == "applied"
    SchemaSubmission.objects.all().delete()
    SchemaPlan.objects.all().delete()
    answered, queries = app_queries(send)

    assert answered["status"] == "noop"
    stored = SchemaSubmission.objects.get(pk=answered["submission_id"])
    assert stored.generated_sql.startswith("-- WF106 schema v001")
    # Sent without the plan first (this process had seen it stored), then again with it.
    inserts = [q for q in queries if q.startswith(("INSERT", "WITH"))]
    assert [q.split()[0] for q in inserts] == ["INSERT", "WITH"]


@pytest.mark.parametrize("kind", ["direct", "none", "superuser"])
def test_the_token_query_loads_the_same_token_and_user_as_the_orm(target, kind):
    user = account(kind)
    user.email, user.first_name = "svc@example.org", "Service"
    user.save()
    key = Token.objects.create(user=user).key
    expected = Token.objects.select_related("user").get(key=key)

    found_user, token = WebhookTokenAuthentication().authenticate_credentials(key)

    assert found_user is token.user
    assert token.holds_submit_schema == (
        kind == "direct"
    )  # a superuser's rights come from is_superuser
    for instance, orm in ((token, expected), (found_user, expected.user)):
        for field in type(orm)._meta.concrete_fields:
            assert getattr(instance, field.attname) == getattr(orm, field.attname), field.name
        assert not instance._state.adding and instance._state.db == orm._state.db
    assert set(vars(found_user)) == set(vars(expected.user))  # no query columns left on it


def test_an_unknown_token_is_refused_by_the_token_query(target):
    Token.objects.create(user=account("direct"))
    with pytest.raises(AuthenticationFailed):
        WebhookTokenAuthentication().authenticate_credentials("0" * 40)
