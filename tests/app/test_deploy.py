"""Production readiness: Django's deployment checks, and answers that never leak secrets."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from revos_schema.envvars import environment_without_settings
from revos_schema.models import SchemaSubmission
from tests.builder.helpers import PATIENTS, envelope, load_fixture

PROJECT_ROOT = Path(__file__).resolve().parents[2]
URL = "/wf106/schema-builder"


def database_url() -> str:
    """The URL of the test run's database server (a socket directory percent-encoded as host)."""
    config = connections["default"].settings_dict
    host = config.get("HOST") or ""
    host = quote(host, safe="") if host.startswith("/") else host
    user = quote(config.get("USER") or "", safe="")
    password = config.get("PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}" if password else user
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"postgresql://{credentials}@{host}{port}/{quote(config['NAME'], safe='')}"


def test_the_deployment_checks_pass_with_production_settings():
    env = environment_without_settings()
    env.update(
        DJANGO_SETTINGS_MODULE="revos_schema.settings",
        SECRET_KEY=secrets.token_urlsafe(48),  # 64 characters, like a generated production key
        ALLOWED_HOSTS="schema.example.com",
        DATABASE_URL=database_url(),
    )
    assert len(env["SECRET_KEY"]) == 64
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "no issues" in output, output


# --- answers never carry secrets or internals ----------------------------------------------------


@pytest.fixture
def token() -> str:
    user = User.objects.create_user("svc-secrets")
    user.user_permissions.add(Permission.objects.get(codename="submit_schema"))
    return Token.objects.create(user=user).key


@pytest.fixture
def client(token: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return api


def post(client: APIClient, body: object):
    return client.post(URL, data=json.dumps(body), content_type="application/json")


@pytest.mark.django_db
def test_an_unexpected_error_is_a_500_envelope_without_internals(
    client, target, monkeypatch, settings
):
    def explode(*args, **kwargs):
        raise RuntimeError("secret-xyz: password=hunter2 at /srv/app/internal.py")

    monkeypatch.setattr("revos_schema.api.submit_envelope", explode)
    response = post(client, envelope([PATIENTS]))

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert set(data) == {"meta_out", "result", "audit"}
    assert data["result"]["status"] == "failed"
    assert data["meta_out"]["success"] is False
    text = response.content.decode()
    for leak in ("secret-xyz", "hunter2", "internal.py", "Traceback", "RuntimeError"):
        assert leak not in text
    assert settings.SECRET_KEY not in text


@pytest.mark.django_db
def test_the_token_never_appears_in_an_answer_or_a_stored_submission(client, token, target):
    applied = post(client, load_fixture("foundation_v001.json"))
    noop = post(client, load_fixture("foundation_v001.json"))
    blocked = post(client, envelope([{"name": "x", "columns": [{"name": "a", "type": "NOPE"}]}]))
    preview = post(client, envelope([PATIENTS], version="002", dry_run=True))
    status = client.get(applied.json()["result"]["submission_url"])
    wrong_token = APIClient()
    wrong_token.credentials(HTTP_AUTHORIZATION=f"Token {token[::-1]}")
    unauthorized = wrong_token.post(URL, data="{}", content_type="application/json")

    answers = {
        "applied": applied,
        "noop": noop,
        "blocked": blocked,
        "preview": preview,
        "status": status,
        "unauthorized": unauthorized,
    }
    assert {name: r.status_code for name, r in answers.items()} == {
        "applied": 200,
        "noop": 200,
        "blocked": 400,
        "preview": 200,
        "status": 200,
        "unauthorized": 401,
    }
    for name, response in answers.items():
        text = response.content.decode()
        assert token not in text, name
        assert token[::-1] not in text, name
        assert not any(token in value for value in response.headers.values()), name
    for submission in SchemaSubmission.objects.all():
        stored = json.dumps([submission.envelope, submission.response, submission.actor])
        assert token not in stored
