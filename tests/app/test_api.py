"""The WF106 webhook over HTTP (Django's test client), against a real PostgreSQL target."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models import F, Func
from psycopg import sql
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from builder.pipeline import Prepared, prepare
from revos_schema.models import SchemaEvent, SchemaPlan, SchemaSubmission
from tests.builder.helpers import PATIENTS, envelope, load_fixture

URL = "/wf106/schema-builder"
pytestmark = pytest.mark.django_db


def make_token(username: str, *, permitted: bool) -> str:
    user = User.objects.create_user(username)  # a service account: not staff, no password
    if permitted:
        user.user_permissions.add(Permission.objects.get(codename="submit_schema"))
    return Token.objects.create(user=user).key


@pytest.fixture
def client() -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {make_token('svc-crm', permitted=True)}")
    return api


def post(client: APIClient, body: object):
    return client.post(URL, data=json.dumps(body), content_type="application/json")


def assert_envelope(data: dict, status: str) -> None:
    assert set(data) == {"meta_out", "result", "audit"}
    assert data["meta_out"]["workflow_name"] == "WF106"
    assert data["result"]["status"] == status


def test_missing_token_is_401_with_the_envelope_shape(target):
    response = APIClient().post(URL, data="{}", content_type="application/json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert_envelope(response.json(), "unauthorized")
    assert not SchemaSubmission.objects.exists()


def test_wrong_token_is_401(target):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = api.post(URL, data="{}", content_type="application/json")
    assert response.status_code == 401
    assert_envelope(response.json(), "unauthorized")


@pytest.mark.parametrize("backends", ["model backend only", "another backend too"])
def test_a_token_with_a_nul_character_is_401_not_a_database_error(target, settings, backends):
    if backends != "model backend only":
        settings.AUTHENTICATION_BACKENDS = [
            "django.contrib.auth.backends.ModelBackend",
            "django.contrib.auth.backends.AllowAllUsersModelBackend",
        ]
    key = make_token("svc-nul", permitted=True)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key[:20]}\x00{key[20:]}")
    response = api.post(URL, data="{}", content_type="application/json")
    assert response.status_code == 401
    assert_envelope(response.json(), "unauthorized")


def test_a_token_without_the_permission_is_403(target):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {make_token('nobody', permitted=False)}")
    response = post(api, envelope([PATIENTS]))
    assert response.status_code == 403
    assert_envelope(response.json(), "forbidden")
    assert not SchemaSubmission.objects.exists()


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete", "options"])
def test_other_methods_are_405(client, target, method):
    response = getattr(client, method)(URL)
    assert response.status_code == 405
    assert_envelope(response.json(), "method_not_allowed")
    assert response["Allow"] == "POST"


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options"])
def test_the_status_endpoint_answers_only_get(client, target, method):
    response = getattr(client, method)(f"{URL}/submissions/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 405
    assert_envelope(response.json(), "method_not_allowed")
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"payload": NaN}', "invalid_json"),
        (b'{"payload": {}, "payload": {}}', "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_unusable_bodies_are_400_not_500(client, target, body, code):
    response = client.post(URL, data=body, content_type="application/json")
    assert response.status_code == 400
    data = response.json()
    assert_envelope(data, "blocked")
    assert [e["code"] for e in data["result"]["validation_errors"]] == [code]
    assert_stored_without_body(data, code)


def assert_stored_without_body(data: dict, code: str) -> None:
    """The refused request is on record (who, why, the answer), its body is not."""
    stored = SchemaSubmission.objects.get()
    assert data["result"]["submission_id"] == str(stored.pk)
    assert (stored.status, stored.http_status, stored.source) == ("blocked", 400, "api")
    assert stored.actor == "svc-crm"
    assert stored.envelope is None
    assert [e["code"] for e in stored.validation_errors] == [code]
    assert stored.response["result"] == {
        k: v for k, v in data["result"].items() if k not in ("submission_id", "submission_url")
    }


def test_a_body_over_the_limit_is_400(client, target, settings):
    settings.WF106_MAX_BODY_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = envelope([PATIENTS]) | {"meta": {"padding": "x" * 2000}}
    response = post(client, body)
    assert response.status_code == 400
    assert response.json()["result"]["validation_errors"][0]["code"] == "too_large"
    assert_stored_without_body(response.json(), "too_large")


def test_non_object_json_is_blocked(client, target):
    response = post(client, [1, 2])
    assert response.status_code == 400
    assert response.json()["result"]["validation_errors"][0]["code"] == "invalid_type"


def test_applied_then_noop_then_conflict(client, target, target_conn):
    first = post(client, load_fixture("foundation_v001.json"))
    assert first.status_code == 200, first.json()
    data = first.json()
    assert_envelope(data, "applied")
    outputs = data["result"]["primary_outputs"]
    assert (outputs["schema_version"], outputs["tables_created"]) == ("001", 10)
    assert outputs["indexes_created"] == 25
    assert data["meta_out"]["success"] is True
    assert data["audit"]["data_written"][0]["record_id"] == outputs["migration_log_id"]
    assert data["audit"]["external_calls"][0]["service"] == "postgresql"
    ledger = target_conn.execute(
        sql.SQL("SELECT id::text, status FROM {}").format(
            sql.Identifier(target, "schema_migrations")
        )
    ).fetchall()
    assert ledger == [(outputs["migration_log_id"], "success")]

    second = post(client, load_fixture("foundation_v001.json"))
    assert second.status_code == 200
    assert_envelope(second.json(), "noop")
    assert second.json()["result"]["already_applied_at"]

    changed = load_fixture("foundation_v001.json")
    changed["payload"]["tables"][0]["columns"].append({"name": "region", "type": "TEXT"})
    third = post(client, changed)
    assert third.status_code == 409
    assert_envelope(third.json(), "conflict")

    statuses = list(SchemaSubmission.objects.order_by("created_at").values_list("status", "source"))
    assert statuses == [("applied", "api"), ("noop", "api"), ("conflict", "api")]
    assert SchemaEvent.objects.count() == 1


def test_a_retried_body_is_answered_and_stored_like_the_first(client, target):
    """The same bytes again (read from memory the second time) and the same value re-spaced."""
    body = json.dumps(load_fixture("foundation_v001.json"))
    answers = [
        client.post(URL, data=text, content_type="application/json").json()
        for text in (body, body, json.dumps(json.loads(body), indent=2))
    ]

    assert [a["result"]["status"] for a in answers] == ["applied", "noop", "noop"]
    hashes = {a["meta_out"]["inputs_hash"] for a in answers}
    assert len(hashes) == 1
    stored = SchemaSubmission.objects.order_by("created_at")
    assert [row.envelope for row in stored] == [json.loads(body)] * 3
    assert [row.response["meta_out"]["inputs_hash"] for row in stored] == [hashes.pop()] * 3
    # A changed body is read and checked anew: the duplicate key is refused.
    duplicate = body[:-1] + ', "payload": {}}'
    refused = client.post(URL, data=duplicate, content_type="application/json")
    assert refused.status_code == 400
    assert refused.json()["result"]["validation_errors"][0]["code"] == "invalid_json"


# Not in a test transaction: the outcome is stored as in production (one statement, autocommit).
@pytest.mark.django_db(transaction=True)
def test_an_applied_outcome_and_its_event_are_stored_as_answered(client, target):
    answer = post(client, load_fixture("foundation_v001.json")).json()
    result = answer["result"]
    stored = SchemaSubmission.objects.get(pk=result["submission_id"])

    linked = {"submission_id", "submission_url"}
    assert stored.response == {
        **answer,
        "result": {k: v for k, v in result.items() if k not in linked},
    }
    assert (stored.status, stored.http_status) == ("applied", 200)
    assert str(stored.migration_log_id) == result["primary_outputs"]["migration_log_id"]
    assert (stored.validation_errors, stored.error_message) == ([], "")
    assert stored.updated_at > stored.created_at  # auto_now, as the ORM's save sets it
    assert stored.generated_sql.startswith("-- WF106 schema v001")  # from the `received` row

    event = SchemaEvent.objects.get()
    assert (event.event_type, event.submission_id) == ("schema_migration_applied", stored.pk)
    assert event.payload["migration_log_id"] == result["primary_outputs"]["migration_log_id"]
    assert event.payload["schema_version"] == "001"
    assert stored.created_at < event.created_at


def test_preview_executes_nothing(client, target, target_conn):
    response = post(client, envelope([PATIENTS], dry_run=True))
    assert response.status_code == 200
    assert_envelope(response.json(), "preview")
    assert "CREATE TABLE IF NOT EXISTS" in response.json()["result"]["primary_outputs"]["sql"]
    count = target_conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s",
        [target],
    ).fetchone()
    assert count == (0,)


def test_blocked_lists_every_error_and_is_stored(client, target):
    body = envelope(
        [
            {"name": "", "columns": [{"name": "a", "type": "TEXT; DROP TABLE x"}]},
            {"name": "b", "columns": [{"name": "c", "type": "TEXT", "default": "pg_sleep(9)"}]},
        ]
    )
    response = post(client, body)
    assert response.status_code == 400
    errors = response.json()["result"]["validation_errors"]
    assert {(e["path"], e["code"]) for e in errors} >= {
        ("payload.tables[0].columns[0].type", "not_allowed"),
        ("payload.tables[1].columns[0].default", "not_allowed"),
    }
    assert all(set(e) == {"path", "code", "message"} for e in errors)
    submission = SchemaSubmission.objects.get()
    assert submission.status == "blocked"
    assert submission.validation_errors == errors
    assert response.json()["result"]["submission_id"] == str(submission.pk)


def test_failed_is_500_rolled_back_recorded_and_without_internals(client, target, target_conn):
    assert post(client, envelope([PATIENTS])).status_code == 200
    table = sql.Identifier(target, "patients")
    target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name, mrn) "
            "VALUES ('00000000-0000-0000-0000-00000000000a', 'a', 'b', 'not a number')"
        ).format(table)
    )
    # A type change the profile lets through, whose cast fails on the rows: inside the apply's
    # transaction, so all of it is rolled back.
    numeric_mrn = {
        **PATIENTS,
        "columns": [
            {**c, "type": "INTEGER"} if c["name"] == "mrn" else c for c in PATIENTS["columns"]
        ],
    }
    body = envelope([numeric_mrn], version="002")
    body["context"]["validation_profile"] = "permissive"
    response = post(client, body)
    assert response.status_code == 500
    data = response.json()
    assert_envelope(data, "failed")
    assert data["result"]["error"].startswith("22P02")
    text = response.content.decode()
    assert "Traceback" not in text and "password" not in text.lower()
    assert data["audit"]["data_written"][0]["status"] == "failed"
    statuses = target_conn.execute(
        sql.SQL("SELECT version, status FROM {} ORDER BY applied_at").format(
            sql.Identifier(target, "schema_migrations")
        )
    ).fetchall()
    assert statuses == [("001", "success"), ("002", "failed")]
    # Stored as `received` while its script ran, then updated with the outcome and its event.
    stored = SchemaSubmission.objects.get(pk=data["result"]["submission_id"])
    assert (stored.status, stored.http_status) == ("failed", 500)
    assert stored.error_message.startswith("22P02")
    assert stored.response["result"]["error"] == data["result"]["error"]
    mrn_type = target_conn.execute(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'patients' AND column_name = 'mrn'",
        [target],
    ).fetchone()
    assert mrn_type == ("text",)
    assert stored.generated_sql.startswith("-- WF106 schema v002")
    event = SchemaEvent.objects.get(submission=stored)
    assert event.event_type == "schema_migration_failed"
    outputs = data["result"]["primary_outputs"]
    assert event.payload["migration_log_id"] == outputs["migration_log_id"]
    assert event.payload["error"] == data["result"]["error"]
    assert event.payload["submission_id"] == str(stored.pk)


def test_sql_failing_the_parser_check_is_500_stored_and_never_sent(
    client, target, target_conn, monkeypatch
):
    import builder.pipeline
    from builder.errors import UnsafeSQLError

    def unsafe(schema, target_schema="public"):
        raise UnsafeSQLError("statements[9]: statement kind DropStmt is not allowed")

    monkeypatch.setattr(builder.pipeline, "render_migration", unsafe)
    builder.pipeline.clear_plan_cache()

    response = post(client, envelope([PATIENTS], version="007"))

    assert response.status_code == 500
    data = response.json()
    assert_envelope(data, "failed")
    assert "parser check" in data["result"]["summary"]
    assert "DropStmt" not in response.content.decode()
    # Nothing reached the target, not even its ledger.
    assert target_conn.execute(
        "SELECT to_regclass(%s)", [f"{target}.schema_migrations"]
    ).fetchone() == (None,)
    stored = SchemaSubmission.objects.get(pk=data["result"]["submission_id"])
    assert (stored.status, stored.http_status) == ("failed", 500)
    assert "DropStmt" in stored.error_message


def test_force_apply_reapplies_an_applied_version(client, target, target_conn):
    assert post(client, envelope([PATIENTS])).status_code == 200
    target_conn.execute(
        sql.SQL("DROP INDEX {}").format(sql.Identifier(target, "idx_patients_phone"))
    )
    response = post(client, envelope([PATIENTS], force_apply=True))
    assert response.status_code == 200
    outputs = response.json()["result"]["primary_outputs"]
    assert outputs["reapplied"] is True
    assert outputs["indexes_created"] == 1
    assert response.json()["audit"]["data_written"][0]["status"] == "reapplied"


def test_submission_status_endpoint(client, target):
    created = post(client, envelope([PATIENTS], dry_run=True)).json()["result"]
    response = client.get(created["submission_url"])
    assert response.status_code == 200
    assert_envelope(response.json(), "preview")
    assert response.json()["result"]["submission_id"] == created["submission_id"]
    missing = client.get(f"{URL}/submissions/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert_envelope(missing.json(), "not_found")
    anonymous = APIClient().get(created["submission_url"])
    assert anonymous.status_code == 401


def test_a_submission_is_read_by_its_sender_and_by_operators_only(client, target):
    created = post(client, envelope([PATIENTS], dry_run=True)).json()["result"]
    other = User.objects.create_user("svc-other")
    other.user_permissions.add(Permission.objects.get(codename="submit_schema"))
    operator = User.objects.create_user("operator")
    operator.user_permissions.add(
        Permission.objects.get(codename="submit_schema"),
        Permission.objects.get(codename="view_schemasubmission"),
    )
    superuser = User.objects.create_superuser("root", password=None)

    def read_as(user: User):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        return api.get(created["submission_url"])

    assert client.get(created["submission_url"]).status_code == 200  # its sender
    hidden = read_as(other)
    assert hidden.status_code == 404  # as for a submission that does not exist
    assert hidden.json()["result"]["summary"] == "No such submission."
    assert created["submission_id"] not in hidden.content.decode()
    assert read_as(operator).status_code == 200
    assert read_as(superuser).status_code == 200


def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/wf106/schema-builder" in paths
    responses = paths["/wf106/schema-builder"]["post"]["responses"]
    assert {"200", "400", "401", "403", "409", "500"} <= set(responses)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content


# Committed by the app's connection while the apply's transaction is open: not in a test's.
@pytest.mark.django_db(transaction=True)
def test_an_apply_is_on_record_as_received_before_the_target_commits(client, target, target_dsn):
    import psycopg

    from builder.db import ledger

    submissions = sql.Identifier("public", SchemaSubmission._meta.db_table)
    plans = sql.Identifier("public", SchemaPlan._meta.db_table)
    seen = sql.Identifier(target, "seen_at_commit")
    # A deferred constraint trigger on the ledger runs as the apply's transaction commits, and
    # keeps what the app's database held at that moment.
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        ledger.ensure_ledger(conn, target)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {seen} (status text, script text, version text);"
                "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO {seen} SELECT s.status, p.generated_sql, s.schema_version "
                "FROM {submissions} s LEFT JOIN {plans} p ON p.digest = s.plan_id; "
                "RETURN NULL; END $$;"
                "CREATE CONSTRAINT TRIGGER seen_at_commit AFTER INSERT ON {ledger} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {function}()"
            ).format(
                seen=seen,
                function=sql.Identifier(target, "keep_what_is_seen"),
                submissions=submissions,
                plans=plans,
                ledger=sql.Identifier(target, "schema_migrations"),
            )
        )
        response = post(client, load_fixture("foundation_v001.json"))
        at_commit = conn.execute(sql.SQL("SELECT * FROM {}").format(seen)).fetchall()

    assert response.json()["result"]["status"] == "applied"
    stored = SchemaSubmission.objects.get()
    # On record before the target commits, with the SQL it ran.
    assert at_commit == [("received", stored.generated_sql, "001")]
    assert stored.generated_sql.startswith("-- WF106 schema v001")
    assert stored.status == "applied"
    assert stored.normalized_schema["version"] == "001"
    assert stored.response["result"]["status"] == "applied"


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_stored_normalized_schema_is_the_schema_as_a_json_object(client, target, dry_run):
    body = load_fixture("foundation_v001.json")
    body["payload"]["description"] = "Grundschema für Mandanten"  # stored as text, not escaped
    body["payload"]["dry_run"] = dry_run
    for _ in range(2):  # planned, then from the plan cache
        post(client, body)

    planned = prepare(body)
    assert isinstance(planned, Prepared)
    for stored in SchemaSubmission.objects.all():
        assert stored.normalized_schema == planned.schema.to_dict()
    assert set(
        SchemaSubmission.objects.annotate(
            kind=Func(F("plan__normalized_schema"), function="jsonb_typeof")
        ).values_list("kind", flat=True)
    ) == {"object"}


def test_an_apply_that_cannot_be_recorded_is_rolled_back_500_and_in_the_ledger(
    client, target, target_dsn, monkeypatch
):
    import psycopg

    from tests.app.conftest import trigger

    # PostgreSQL refuses to store the `received` row: a real failure of the app's database.
    with trigger(
        SchemaSubmission._meta.db_table,
        "BEFORE INSERT",
        "IF NEW.status = 'received' THEN "
        "RAISE EXCEPTION 'the submissions database went away'; END IF; RETURN NEW;",
    ):
        response = post(client, load_fixture("foundation_v001.json"))

    assert response.status_code == 500
    assert_envelope(response.json(), "failed")
    assert "went away" not in response.content.decode()  # no internals in the answer
    with psycopg.connect(target_dsn) as conn:
        tables = conn.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            [target],
        ).fetchall()
        rows = conn.execute(
            sql.SQL("SELECT version, status, error_message FROM {}").format(
                sql.Identifier(target, "schema_migrations")
            )
        ).fetchall()
    assert tables == [("schema_migrations",)]  # the fixture's tables were rolled back
    assert [(r[0], r[1]) for r in rows] == [("001", "failed")]
    assert "recording the attempt failed" in rows[0][2]


def test_an_outcome_and_its_event_are_stored_together_or_not_at_all(
    client, target, target_dsn, event_log_full
):
    import psycopg

    response = post(client, load_fixture("foundation_v001.json"))

    # The target committed: the answer says so, without internals, and points at the ledger.
    assert response.status_code == 500
    assert_envelope(response.json(), "failed")
    assert "the request was applied" in response.json()["result"]["summary"]
    assert "event log" not in response.content.decode()
    # Neither the event nor the outcome: the submission is still `received`, with its SQL.
    assert not SchemaEvent.objects.exists()
    stored = SchemaSubmission.objects.get()
    assert (stored.status, stored.schema_version) == ("received", "001")
    assert stored.generated_sql.startswith("-- WF106 schema v001")
    with psycopg.connect(target_dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT version, status FROM {}").format(
                sql.Identifier(target, "schema_migrations")
            )
        ).fetchall()
    assert rows == [("001", "success")]


def test_an_outcome_that_finds_no_submission_to_update_is_not_stored_and_nor_is_its_event(
    client, target, submission_updates_skipped
):
    response = post(client, load_fixture("foundation_v001.json"))

    assert response.status_code == 500
    assert_envelope(response.json(), "failed")
    assert "the request was applied" in response.json()["result"]["summary"]
    assert not SchemaEvent.objects.exists()
    assert SchemaSubmission.objects.get().status == "received"


def test_an_unreachable_target_is_503_and_the_request_is_stored_failed(
    client, target, settings, monkeypatch
):
    from revos_schema import services

    # Port 1 on loopback: nothing listens, connecting is refused at once.
    monkeypatch.setattr(
        services, "target_conninfo", lambda: "host=127.0.0.1 port=1 dbname=nope user=nobody"
    )
    settings.WF106_TARGET_POOL_TIMEOUT_S = 0.5
    try:
        response = post(client, load_fixture("foundation_v001.json"))
    finally:
        services.close_target_pools()

    assert response.status_code == 503
    assert_envelope(response.json(), "failed")
    assert "port=1" not in response.content.decode()
    stored = SchemaSubmission.objects.get()
    assert (stored.status, stored.http_status) == ("failed", 503)
    assert stored.error_message.startswith("target database unavailable")


@pytest.mark.parametrize("error", ["OperationalError", "InterfaceError"])
@pytest.mark.parametrize("method", ["post", "get"])
def test_an_unreachable_service_database_is_503_with_the_envelope(
    client, target, monkeypatch, caplog, method, error
):
    import django.db

    from revos_schema import api

    def unreachable(*args):
        raise getattr(django.db, error)("connection to server at 10.0.0.1 failed")

    # The token is the first thing read from the service's database.
    monkeypatch.setattr(api.WebhookTokenAuthentication, "authenticate_credentials", unreachable)
    if method == "post":
        response = post(client, envelope([PATIENTS]))
    else:
        response = client.get(f"{URL}/submissions/00000000-0000-0000-0000-000000000000")

    assert response.status_code == 503
    assert_envelope(response.json(), "failed")
    assert "Retry later" in response.json()["result"]["summary"]
    assert "10.0.0.1" not in response.content.decode()  # no internals in the answer
    assert "service's database is unavailable" in caplog.text


@pytest.mark.parametrize(
    ("change", "expected"),
    [({"dry_run": True}, 503), ({"tables": "none"}, 400)],
)
def test_answers_that_need_no_target_do_not_wait_for_an_unreachable_one(
    client, target, settings, monkeypatch, change, expected
):
    from revos_schema import services

    monkeypatch.setattr(
        services, "target_conninfo", lambda: "host=127.0.0.1 port=1 dbname=nope user=nobody"
    )
    settings.WF106_TARGET_POOL_TIMEOUT_S = 0.5
    body = envelope([PATIENTS])
    body["payload"].update(change)
    try:
        response = post(client, body)
    finally:
        services.close_target_pools()
    assert response.status_code == expected


def test_a_schema_evolves_through_the_webhook(client, target, target_conn):
    assert post(client, load_fixture("foundation_v001.json")).status_code == 200
    target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name, mrn) "
            "VALUES ('00000000-0000-0000-0000-00000000000a', 'a', 'b', 'MRN-1')"
        ).format(sql.Identifier(target, "patients"))
    )
    preview = load_fixture("foundation_v002.json")
    preview["payload"]["dry_run"] = True

    response = post(client, preview)

    assert response.status_code == 200
    outputs = response.json()["result"]["primary_outputs"]
    assert response.json()["result"]["status"] == "preview"
    assert (
        f'ALTER TABLE "{target}"."patients" ADD COLUMN IF NOT EXISTS "email" TEXT'
        in (outputs["sql"])
    )
    assert {"level", "findings", "blockers", "notes"} <= set(outputs["risk"])
    assert {op["action"] for op in outputs["plan"]} >= {"add_column", "create_table"}
    assert "insurance_policies" not in {
        r[0]
        for r in target_conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", [target]
        )
    }

    response = post(client, load_fixture("foundation_v002.json"))

    assert response.status_code == 200, response.json()
    outputs = response.json()["result"]["primary_outputs"]
    assert outputs["verification"] == {"ok": True, "differences": []}
    assert [step["status"] for step in outputs["steps"]] == ["ran", "ran"]
    stored = SchemaSubmission.objects.get(pk=response.json()["result"]["submission_id"])
    assert stored.status == "applied"
    assert stored.response["result"]["primary_outputs"]["verification"]["ok"] is True


def ledger_row(target_conn, target: str, row_id: str) -> tuple:
    return target_conn.execute(
        sql.SQL("SELECT applied_by, metadata FROM {} WHERE id = %s").format(
            sql.Identifier(target, "schema_migrations")
        ),
        [row_id],
    ).fetchone()


@pytest.mark.parametrize("claimed", ["admin'); DROP TABLE patients; --", None])
def test_the_ledger_names_the_authenticated_account_not_the_claimed_actor(
    client, target, target_conn, claimed
):
    body = envelope([PATIENTS])
    body["context"]["actor_id"] = claimed

    response = post(client, body)

    assert response.status_code == 200, response.json()
    row_id = response.json()["result"]["primary_outputs"]["migration_log_id"]
    applied_by, metadata = ledger_row(target_conn, target, row_id)
    assert applied_by == "svc-crm"
    assert metadata["claimed_actor_id"] == claimed
    assert "approved_by" not in metadata


@pytest.mark.parametrize(("wait", "connect_timeout"), [(5.0, "5"), (0.5, "2"), (7.5, "8")])
def test_new_target_connections_give_up_as_soon_as_a_request_stops_waiting(
    target, settings, wait, connect_timeout
):
    from psycopg.conninfo import conninfo_to_dict

    from revos_schema import services

    settings.WF106_TARGET_POOL_TIMEOUT_S = wait
    assert conninfo_to_dict(services.target_conninfo())["connect_timeout"] == connect_timeout


def test_the_target_connection_keeps_the_urls_libpq_parameters(target, settings, monkeypatch):
    from django.db import connections
    from psycopg.conninfo import conninfo_to_dict

    from revos_schema import services

    config = connections["target"].settings_dict
    options = {"sslmode": "prefer", "application_name": "revos-target", "server_side_binding": True}
    monkeypatch.setitem(config, "OPTIONS", options)
    conninfo = conninfo_to_dict(services.target_conninfo())
    assert (conninfo["sslmode"], conninfo["application_name"]) == ("prefer", "revos-target")
    assert "server_side_binding" not in conninfo
