"""Settings read from the environment, each case in a fresh interpreter with a controlled env."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from revos_schema.envvars import environment_without_settings
from revos_schema.settings import _db_config
from tests.receiver import SECRET

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHOW_SETTINGS = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "SECRET_KEY": settings.SECRET_KEY,
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
    "DATABASES": settings.DATABASES,
    "WF106_TARGET_SCHEMA": settings.WF106_TARGET_SCHEMA,
}, default=str))
"""


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a new interpreter; of the settings' variables only `env` is set."""
    clean = environment_without_settings()
    clean["DJANGO_SETTINGS_MODULE"] = "revos_schema.settings"
    return subprocess.run(
        [sys.executable, "-c", SHOW_SETTINGS],
        env={**clean, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_refuses_to_start_with_debug_off_and_no_secret_key():
    result = load_settings()

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY must be set" in result.stderr


def test_debug_off_with_a_secret_key_starts_closed():
    result = load_settings(SECRET_KEY="s3cret")

    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["DEBUG"] is False
    assert loaded["SECRET_KEY"] == "s3cret"
    assert loaded["ALLOWED_HOSTS"] == []


def test_debug_on_uses_a_development_key_and_local_hosts():
    result = load_settings(DEBUG="1")

    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["SECRET_KEY"].startswith("dev-only")
    assert loaded["ALLOWED_HOSTS"] == ["127.0.0.1", "localhost"]


def test_target_mirrors_the_app_database_unless_configured():
    url = "postgresql://app@db.example:5433/app"

    same = json.loads(load_settings(DEBUG="1", DATABASE_URL=url).stdout)["DATABASES"]
    separate = json.loads(
        load_settings(
            DEBUG="1", DATABASE_URL=url, TARGET_DATABASE_URL="postgresql://t@target.example/t"
        ).stdout
    )["DATABASES"]

    assert same["target"]["HOST"] == same["default"]["HOST"] == "db.example"
    assert same["target"]["TEST"]["MIRROR"] == "default"
    assert (separate["target"]["HOST"], separate["target"]["NAME"]) == ("target.example", "t")
    assert separate["target"]["TEST"]["MIRROR"] is None


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("postgresql://postgres@%2Fsrv%2Fproj%2F.pgdata:5432/postgres", "/srv/proj/.pgdata", 5432),
        ("postgres://postgres@%2FSrv%2Fa%20b%2Bc/postgres", "/Srv/a b+c", ""),
        ("postgres://postgres@127.0.0.1:5432/postgres", "127.0.0.1", 5432),
    ],
)
def test_a_percent_encoded_host_is_a_socket_directory(url, host, port):
    config = _db_config(url)

    assert (config["HOST"], config["PORT"]) == (host, port)
    assert (config["NAME"], config["USER"]) == ("postgres", "postgres")
    assert config["ENGINE"] == "django.db.backends.postgresql"


def test_every_variable_the_settings_read_is_listed_in_envvars():
    import re

    from revos_schema.envvars import SETTINGS_ENV_VARS

    source = (PROJECT_ROOT / "revos_schema" / "settings.py").read_text()
    read = set(re.findall(r'env\.[a-z_]+\(\s*"([A-Z0-9_]+)"', source))
    assert read == set(SETTINGS_ENV_VARS)


@pytest.mark.parametrize(
    ("url", "secret", "refusal"),
    [
        ("ftp://wf11.internal/events", SECRET, "WF11_WEBHOOK_URL must be an http"),
        ("http:///events", SECRET, "WF11_WEBHOOK_URL must be an http"),
        ("https://wf11.internal/events", "", "needs WF11_WEBHOOK_SECRET"),
        ("https://wf11.internal/events", "plain-password", "needs WF11_WEBHOOK_SECRET"),
        ("https://wf11.internal/events", "whsec_", "needs WF11_WEBHOOK_SECRET"),
    ],
)
def test_a_receiver_url_needs_a_standard_webhooks_secret(url, secret, refusal):
    result = load_settings(DEBUG="1", WF11_WEBHOOK_URL=url, WF11_WEBHOOK_SECRET=secret)

    assert result.returncode != 0
    assert refusal in result.stderr


def test_a_receiver_url_with_its_secret_starts():
    result = load_settings(
        DEBUG="1", WF11_WEBHOOK_URL="https://wf11.internal/events", WF11_WEBHOOK_SECRET=SECRET
    )

    assert result.returncode == 0, result.stderr
