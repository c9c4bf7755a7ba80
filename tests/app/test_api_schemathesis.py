"""Schemathesis against the app's own OpenAPI schema, in process (WSGI), with a real target.

Every generated request must get an answer that the schema documents (status code, content type,
body) and never a server error. The documented 5xx answers are 503 (target unavailable) and 500
`failed` (execution failed and was rolled back); against an empty, available target, `failed`
means that validation let through something PostgreSQL refuses, i.e. a bug.

Random text hardly ever passes validation, so a second test builds envelopes from the allow lists
(types, defaults, references, indexes) that mostly do, and checks that each one is either applied
or blocked with `validation_errors`, never `failed`.

Each example runs against a schema of its own, so examples are independent (the answer to one
request never depends on an earlier one) and Hypothesis can shrink a failure reliably.
"""

from __future__ import annotations

import json
import string
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import schemathesis
from django.contrib.auth.models import Permission, User
from django.test import override_settings
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import sql
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from revos_schema.wsgi import application

# The WSGI app runs Django's request cycle, which closes the test's database connection after
# each request: the tests must not run inside one transaction, and what they create must be
# committed for the app to see it.
pytestmark = pytest.mark.django_db(transaction=True)

URL = "/wf106/schema-builder"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
BOUNDED = hypothesis_settings(
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays deterministic
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

# The werkzeug client of schemathesis sends `Host: localhost`; the test settings allow no host
# while this module is collected, so the schema is loaded with that host allowed.
with override_settings(ALLOWED_HOSTS=["localhost"]):
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
SUBMIT = schema[URL]["POST"]


@pytest.fixture(autouse=True)
def localhost(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]


@pytest.fixture
def token() -> str:
    """The key of a committed service account that holds `submit_schema`."""
    user = User.objects.create_user("svc-fuzz")
    user.user_permissions.add(Permission.objects.get(codename="submit_schema"))
    return Token.objects.create(user=user).key


@contextmanager
def fresh_target(dsn: str) -> Iterator[str]:
    """Point the app at a new, empty PostgreSQL schema; drop it afterwards."""
    name = f"t_fz_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        with override_settings(WF106_TARGET_SCHEMA=name):
            yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.mark.slow
@schema.parametrize()
@hypothesis_settings(BOUNDED, max_examples=60)
def test_every_answer_is_documented_and_none_is_a_server_error(case, token, target_dsn):
    with fresh_target(target_dsn):
        case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)


# --- envelopes built from the allow lists ------------------------------------------------------

TABLE_NAMES = ["patients", "order", "user", "lineItems", "Group Members", "t" * 63, "select"]
COLUMN_NAMES = ["value", "Order", "displayName", "group", "c" * 63, "mrn", "default", "user"]
DEFAULT_COLUMNS = ["id", "tenant_id", "created_at", "updated_at", "deleted_at"]
ON_DELETE = ["no action", "restrict", "cascade", "set null", "set default", "CASCADE"]


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _offset(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_NUMBER = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str)
)
_DATETIME = st.datetimes().map(lambda d: d.isoformat(sep=" "))
_INTERVAL_UNITS = ["years", "months", "days", "hours", "mins", "seconds", "weeks", "fortnight"]

# Per base type: values of the kind a caller would write (valid, edge or plainly wrong).
DEFAULTS: dict[str, st.SearchStrategy[Any]] = {
    "SMALLINT": _NUMBER,
    "INTEGER": _NUMBER,
    "BIGINT": _NUMBER,
    "REAL": _NUMBER,
    "DOUBLE PRECISION": _NUMBER,
    "NUMERIC(12,2)": _NUMBER,
    "NUMERIC": _NUMBER,
    "BOOLEAN": st.booleans() | st.sampled_from(["'yes'", "'off'", "'t'", "'maybe'"]),
    "TEXT": _TEXT.map(_quoted),
    "VARCHAR(3)": _TEXT.map(_quoted),
    "CHAR(2)": _TEXT.map(_quoted),
    "UUID": st.uuids().map(str).map(_quoted) | st.just("gen_random_uuid()"),
    "DATE": st.dates().map(lambda d: _quoted(d.isoformat())) | st.just("current_date"),
    "TIME": st.times().map(lambda t: _quoted(t.isoformat())) | st.just("current_time"),
    "TIMESTAMP": _DATETIME.map(_quoted) | st.just("now()"),
    "TIMESTAMPTZ": st.builds(
        lambda d, m: _quoted(d + _offset(m)), _DATETIME, st.integers(-23 * 60 - 59, 23 * 60 + 59)
    )
    | st.just("current_timestamp"),
    "INTERVAL": st.builds(
        lambda n, unit: _quoted(f"{n} {unit}"),
        st.integers(0, 10**12),
        st.sampled_from(_INTERVAL_UNITS),
    ),
    "JSON": _JSON.map(lambda v: _quoted(json.dumps(v))),
    "JSONB": _JSON.map(lambda v: _quoted(json.dumps(v)))
    | st.sampled_from(["'1e999999'", "'-1e-999999'", "'{}'::jsonb"]),
    "BYTEA": st.binary(max_size=4).map(lambda b: _quoted("\\x" + b.hex())),
    "INET": st.ip_addresses().map(lambda a: _quoted(str(a))),
    "CIDR": st.ip_addresses().map(lambda a: _quoted(str(a))),
    "MACADDR": st.binary(min_size=6, max_size=6).map(lambda b: _quoted(b.hex(":"))),
    "TEXT[]": st.sampled_from(["'{}'", "'{a}'"]),
    "JSON[]": st.just("'{}'"),
    "UUID[]": st.just("'{}'"),
}


@st.composite
def columns(draw: st.DrawFn, others: list[str]) -> dict[str, Any]:
    """One caller column: an allow-listed type, maybe a default, flags, maybe a reference."""
    name = draw(st.sampled_from(COLUMN_NAMES + DEFAULT_COLUMNS[:1]))
    column: dict[str, Any] = {"name": name}
    if others and draw(st.integers(0, 4)) == 0:
        # A reference that can be valid: a UUID column pointing at another table's id.
        column["type"] = "UUID"
        column["references"] = {"table": draw(st.sampled_from(others))}
        if draw(st.booleans()):
            column["references"]["on_delete"] = draw(st.sampled_from(ON_DELETE))
    else:
        column["type"] = draw(st.sampled_from(sorted(DEFAULTS)))
        if draw(st.booleans()):
            column["default"] = draw(DEFAULTS[column["type"]])
    for flag in ("not_null", "unique"):
        if draw(st.integers(0, 3)) == 0:
            column[flag] = True
    return column


@st.composite
def tables(draw: st.DrawFn, name: str, others: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": name,
        "columns": draw(st.lists(columns(others), min_size=1, max_size=4)),
    }
    names = [c["name"] for c in table["columns"]] + DEFAULT_COLUMNS
    indexes = st.fixed_dictionaries(
        {"columns": st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)},
        optional={"unique": st.booleans(), "name": st.sampled_from(["idx_custom", "lookup"])},
    )
    table["indexes"] = draw(st.lists(indexes, max_size=2))
    if draw(st.integers(0, 3)) == 0:
        table["tenant_scoped"] = False
    return table


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(TABLE_NAMES), min_size=1, max_size=3, unique=True))
    return {
        "meta": {"tenant_id": "t_001", "workflow_run_id": "wr_fuzz"},
        "payload": {
            "schema_version": draw(st.text(string.digits, min_size=1, max_size=3)),
            "description": "generated from the allow lists",
            "tables": [draw(tables(n, [o for o in names if o != n])) for n in names],
        },
        "context": {"actor_id": "fuzzer"},
    }


@pytest.mark.slow
@given(body=envelopes())
@hypothesis_settings(BOUNDED, max_examples=150)
def test_schemas_from_the_allow_lists_are_applied_or_blocked_never_failed(body, token, target_dsn):
    with fresh_target(target_dsn):
        case = SUBMIT.Case(body=body, media_type="application/json")
        response = case.call_and_validate(
            headers={"Authorization": f"Token {token}"}, checks=CHECKS
        )
    result = response.json()["result"]
    event(result["status"])  # shown by --hypothesis-show-statistics
    assert result["status"] in ("applied", "blocked"), result
    assert (result["status"] == "blocked") == bool(result.get("validation_errors")), result


# --- what the fuzzing found, kept as plain regression tests --------------------------------------


DEFAULT = ".columns[0].default"


def _column(column: dict[str, Any], **table: Any) -> dict[str, Any]:
    return {
        "payload": {
            "schema_version": "001",
            "description": "regression",
            "tables": [{"name": "things", "columns": [column], **table}],
        }
    }


@pytest.fixture
def client(token: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return api


def _invalid(path: str) -> tuple[str, str]:
    return (f"payload.tables[0]{path}", "invalid_value")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        # Stored as SQL NULL in a NOT NULL column: 500.
        (b"null", ("", "invalid_type")),
        # jsonb refuses \u0000 and unpaired surrogates: 500 when the submission was stored.
        (b'{"payload": {"x\\u0000": 1}}', ("", "invalid_json")),
        (b'{"meta": {"tenant_id": "\\ud800"}}', ("", "invalid_json")),
        # PostgreSQL has no btree operator class for json: 500 (42704) at CREATE.
        (_column({"name": "doc", "type": "JSON", "unique": True}), _invalid(".columns[0].unique")),
        (_column({"name": "id", "type": "JSON"}), _invalid(".columns[0].type")),
        (
            _column({"name": "doc", "type": "JSON[]"}, indexes=[{"columns": ["doc"]}]),
            _invalid(".indexes[0].columns[0]"),
        ),
        # Defaults that passed validation and failed at CREATE TABLE (22007, 22015, 22009, 22003).
        *(
            (_column({"name": "d", "type": sql_type, "default": default}), _invalid(DEFAULT))
            for sql_type, default in [
                ("INTERVAL", "'1 fortnight'"),
                ("INTERVAL", "'1 day 1 day'"),
                ("INTERVAL", "'178956971 years'"),
                ("TIMESTAMPTZ", "'2024-01-01T00:00+16:00'"),
                ("JSONB", "'1e999999'"),
                ("JSONB", "'[0e-99999]'"),
            ]
        ),
    ],
)
def test_inputs_that_were_500_are_blocked(client, target_dsn, body, error):
    data = body if isinstance(body, bytes) else json.dumps(body)
    with fresh_target(target_dsn):
        response = client.post(URL, data=data, content_type="application/json")
    assert response.status_code == 400, response.content
    errors = response.json()["result"]["validation_errors"]
    assert [(e["path"], e["code"]) for e in errors] == [error]


@pytest.mark.parametrize(
    ("sql_type", "default"),
    [
        ("INTERVAL", "'1 day 01:30'"),
        ("INTERVAL", "'2 years 3 mons -4 days ago'"),
        ("INTERVAL", "'-00:00:01.5'"),
        ("TIMESTAMPTZ", "'2024-01-01T00:00-15:59'"),
        ("JSONB", "'[1e131071, 1e-16383, 0]'"),
    ],
)
def test_the_edges_of_those_defaults_still_apply(client, target_dsn, sql_type, default):
    body = _column({"name": "d", "type": sql_type, "default": default})
    with fresh_target(target_dsn):
        response = client.post(URL, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["result"]["status"] == "applied"


def test_a_submission_id_that_is_no_uuid_is_a_404_envelope(client):
    # Django's URL resolver answered with its HTML 404 page.
    response = client.get(f"{URL}/submissions/null,null")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["result"]["status"] == "not_found"
    assert set(response.json()) == {"meta_out", "result", "audit"}
