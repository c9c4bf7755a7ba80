"""The environment variables that revos_schema.settings reads (no Django imports, no side effects).

Tests and benchmarks that start the app in a subprocess remove all of them from the environment
they pass on, so that the child sees only the values they set on purpose.
"""

from __future__ import annotations

import os

SETTINGS_ENV_VARS = (
    "ALLOWED_HOSTS",
    "CONN_MAX_AGE",
    "CSRF_COOKIE_SECURE",
    "DATABASE_URL",
    "DEBUG",
    "LOG_LEVEL",
    "SECRET_KEY",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_HSTS_SECONDS",
    "SECURE_PROXY_SSL_HEADER",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "TARGET_DATABASE_URL",
    "WF106_LOCK_TIMEOUT_MS",
    "WF106_MAX_BODY_BYTES",
    "WF106_MAX_COLUMNS",
    "WF106_MAX_COLUMNS_PER_TABLE",
    "WF106_MAX_INDEXES",
    "WF106_MAX_INDEXES_PER_TABLE",
    "WF106_MAX_LOCK_SHARE",
    "WF106_MAX_STATEMENTS",
    "WF106_MAX_TABLES",
    "WF106_ALLOW_SELF_APPROVAL",
    "WF106_REQUIRE_APPROVAL",
    "WF106_STATEMENT_TIMEOUT_MS",
    "WF106_TARGET_POOL_SIZE",
    "WF106_TARGET_POOL_TIMEOUT_S",
    "WF106_TARGET_SCHEMA",
    "WF11_MAX_ATTEMPTS",
    "WF11_REQUEST_TIMEOUT_S",
    "WF11_RETRY_BASE_S",
    "WF11_RETRY_MAX_S",
    "WF11_WEBHOOK_SECRET",
    "WF11_WEBHOOK_URL",
    "WF11_WORKER_TIMEOUT_S",
)


def environment_without_settings() -> dict[str, str]:
    """Return a copy of the environment without any variable the settings read."""
    return {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV_VARS}
