"""The webhook's limits: the size of a version, repeated indexes, and the lock budget."""

from __future__ import annotations

import json
import math
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from builder.db import locks
from builder.db.apply import ApplySettings
from revos_schema.models import SchemaSubmission
from revos_schema.services import builder_settings
from tests.builder.helpers import envelope

URL = "/wf106/schema-builder"
pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    user = User.objects.create_user("svc-limits")
    user.user_permissions.add(Permission.objects.get(codename="submit_schema"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return api


def post(client: APIClient, body: object) -> Any:
    return client.post(URL, data=json.dumps(body), content_type="application/json")


def tables(count: int) -> list[dict[str, Any]]:
    return [
        {"name": f"t{i:03d}", "columns": [{"name": "note", "type": "TEXT"}]} for i in range(count)
    ]


def relations(conn: psycopg.Connection, schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s",
        [schema],
    ).fetchall()
    return [row[0] for row in rows]


def the_error(response: Any) -> dict[str, str]:
    assert response.status_code == 400
    result = response.json()["result"]
    assert result["status"] == "blocked"
    [error] = result["validation_errors"]
    return dict(error)


def test_the_settings_default_to_the_builders_limits():
    assert builder_settings().limits == ApplySettings().limits
    assert builder_settings().max_lock_share == ApplySettings().max_lock_share


def test_a_version_over_a_limit_is_blocked_naming_the_limit_and_nothing_is_stored(
    client, target, target_conn, settings
):
    settings.WF106_MAX_TABLES = 2

    error = the_error(post(client, envelope(tables(3))))

    assert (error["path"], error["code"]) == ("payload.tables", "too_many_tables")
    assert "at most 2 are allowed" in error["message"]
    assert "WF106_MAX_TABLES" in error["message"]
    assert relations(target_conn, target) == []
    stored = SchemaSubmission.objects.get()
    assert (stored.status, stored.http_status) == ("blocked", 400)


def test_raising_the_setting_lets_the_version_through(client, target, target_conn, settings):
    settings.WF106_MAX_INDEXES_PER_TABLE = 2
    request = envelope([{**tables(1)[0], "indexes": [{"columns": ["note"]}]}])
    assert the_error(post(client, request))["code"] == "too_many_indexes"

    settings.WF106_MAX_INDEXES_PER_TABLE = 3
    response = post(client, request)

    assert response.status_code == 200, response.json()["result"]
    assert response.json()["result"]["status"] == "applied"
    assert "t000" in relations(target_conn, target)


def test_a_repeated_index_is_blocked(client, target, target_conn):
    table = {
        **tables(1)[0],
        "indexes": [{"columns": ["note"]}, {"name": "again", "columns": ["note"]}],
    }

    error = the_error(post(client, envelope([table])))

    assert (error["path"], error["code"]) == ("payload.tables[0].indexes[1]", "duplicate_index")
    assert "'idx_t000_note'" in error["message"]
    assert relations(target_conn, target) == []


def test_a_version_over_the_lock_budget_is_blocked_and_nothing_runs(
    client, target, target_conn, settings
):
    # A share of the server's lock table that twenty tables exceed, whatever its size.
    capacity = locks.read_lock_table(target_conn).capacity
    settings.WF106_MAX_LOCK_SHARE = 100 / capacity
    allowed = math.floor(capacity * settings.WF106_MAX_LOCK_SHARE)

    error = the_error(post(client, envelope(tables(20))))

    assert (error["path"], error["code"]) == ("payload.tables", "too_many_locks")
    assert f"at most {allowed:,} on this server" in error["message"]
    assert "max_locks_per_transaction" in error["message"]
    # Not even the ledger: the first apply's transaction, which would create it, was rolled back.
    assert relations(target_conn, target) == []
    stored = SchemaSubmission.objects.get()
    assert (stored.status, stored.http_status) == ("blocked", 400)
    assert [e["code"] for e in stored.validation_errors] == ["too_many_locks"]
