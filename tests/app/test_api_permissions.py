"""Who may call the webhook (Django's `has_perm` decides), and what a request writes."""

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
def test_the_webhook_grants_exactly_what_has_perm_grants(target, kind):
    user = account(kind)
    expected = User.objects.get(pk=user.pk).has_perm("revos_schema.submit_schema")
    assert expected == (kind not in ("none", "other-permission", "empty-group"))

    response = call(user, envelope([PATIENTS], dry_run=True))

    assert response.status_code == (200 if expected else 403)
    assert SchemaSubmission.objects.exists() == expected


@pytest.mark.parametrize("kind", ["direct", "none"])
def test_a_session_user_is_held_to_the_same_permission(target, kind):
    api = APIClient()
    api.force_authenticate(user=account(kind))
    body = json.dumps(envelope([PATIENTS], dry_run=True))
    response = api.post(URL, data=body, content_type="application/json")
    assert response.status_code == (200 if kind == "direct" else 403)


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
    response = call(account(kind), envelope([PATIENTS], dry_run=True))
    assert response.status_code == (200 if kind == "group" else 403)


def app_queries(client_call) -> tuple[Any, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = client_call()
    return response, [q["sql"] for q in queries.captured_queries]


# Not in a test transaction: the queries run as in production (autocommit).
@pytest.mark.django_db(transaction=True)
def test_an_apply_and_its_noop_share_one_stored_plan(target):
    api = client_for(account("group"))
    body = json.dumps(load_fixture("foundation_v001.json"))

    def send():
        return api.post(URL, data=body, content_type="application/json")

    applied, applied_sql = app_queries(send)
    noop, noop_sql = app_queries(send)

    assert applied.json()["result"]["status"] == "applied"
    assert noop.json()["result"]["status"] == "noop"
    plan_sql = 'INSERT INTO "revos_schema_schemaplan"'
    plan_inserts = [q for q in applied_sql + noop_sql if plan_sql in q]
    assert len(plan_inserts) == 1  # the apply's; the noop finds it stored
    submission_inserts = [q for q in noop_sql if "INSERT INTO" in q]
    assert len(submission_inserts) == 1 and "revos_schema_schemasubmission" in submission_inserts[0]
    assert not [q for q in noop_sql if q.startswith("UPDATE")]  # stored once, in its final state
    stored = SchemaSubmission.objects.get(pk=noop.json()["result"]["submission_id"])
    assert (stored.status, stored.http_status) == ("noop", 200)
    assert stored.response["result"]["status"] == "noop"
    first = SchemaSubmission.objects.get(pk=applied.json()["result"]["submission_id"])
    assert stored.plan_id == first.plan_id
    assert SchemaPlan.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_plan_deleted_by_hand_is_stored_again(target):
    api = client_for(account("group"))
    body = json.dumps(load_fixture("foundation_v001.json"))

    def send():
        return api.post(URL, data=body, content_type="application/json").json()["result"]

    assert send()["status"] == "applied"
    SchemaSubmission.objects.all().delete()
    SchemaPlan.objects.all().delete()
    answered = send()

    assert answered["status"] == "noop"
    stored = SchemaSubmission.objects.get(pk=answered["submission_id"])
    assert stored.generated_sql.startswith("-- WF106 schema v001")
    assert SchemaPlan.objects.count() == 1


def test_an_unknown_token_is_refused(target):
    Token.objects.create(user=account("direct"))
    with pytest.raises(AuthenticationFailed):
        WebhookTokenAuthentication().authenticate_credentials("0" * 40)


@pytest.mark.parametrize("kind", [*KINDS, "superuser-inactive", "direct-inactive"])
@pytest.mark.parametrize("codename", ["submit_schema", "approve_schema", "view_schemaplan"])
def test_the_permission_selector_agrees_with_has_perm(kind, codename):
    from revos_schema.selectors import holds_permission

    user = account(kind.removesuffix("-inactive"))
    if kind.endswith("-inactive"):
        user.is_active = False
        user.save()
    fresh = User.objects.get(pk=user.pk)  # has_perm caches what it loaded on the instance
    permission = f"revos_schema.{codename}"
    assert holds_permission(fresh, permission) == User.objects.get(pk=user.pk).has_perm(permission)


def test_with_another_backend_the_selector_asks_has_perm(settings):
    from revos_schema.selectors import holds_permission

    settings.AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        "django.contrib.auth.backends.AllowAllUsersModelBackend",
    ]
    user = User.objects.get(pk=account("group").pk)
    with CaptureQueriesContext(connection) as queries:
        assert holds_permission(user, "revos_schema.submit_schema") is True
    assert queries.captured_queries  # has_perm's own queries
    assert not any("SELECT EXISTS" in q["sql"] for q in queries.captured_queries)
