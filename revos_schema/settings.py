"""Django settings for revos-schema, read from the environment with django-environ.

Environment:
- DATABASE_URL: the app's own database (submissions, users, events). Required; `make run` and
  `make test` point it at the embedded PostgreSQL when it is not set.
- TARGET_DATABASE_URL: the database where schemas are applied (defaults to DATABASE_URL).
- WF106_TARGET_SCHEMA: the PostgreSQL schema inside the target that tables are created in.
- WF106_LOCK_TIMEOUT_MS / WF106_STATEMENT_TIMEOUT_MS: timeouts of one apply transaction.
- WF106_MAX_* and WF106_MAX_LOCK_SHARE: how much one schema version may describe and lock.
- WF11_WEBHOOK_URL / WF11_WEBHOOK_SECRET and WF11_*: where events are delivered, and how.
- SECRET_KEY, DEBUG, ALLOWED_HOSTS.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)

# A development-only key: usable only with DEBUG on. With DEBUG off the app refuses to start
# unless SECRET_KEY comes from the environment.
_DEV_SECRET_KEY = "dev-only-insecure-key-never-use-in-production"  # noqa: S105
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set in the environment when DEBUG is off "
            "(for local work set DEBUG=1, as `make run` does)."
        )
    SECRET_KEY = _DEV_SECRET_KEY

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # Nested inlines for the draft editor (tables > columns, indexes); its JS and CSS ship with it.
    "nested_admin",
    "revos_schema",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "revos_schema.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "revos_schema.wsgi.application"


def _db_config(url: str) -> dict[str, Any]:
    """Parse a database URL, reading a percent-encoded host as a unix-socket directory.

    `postgresql://postgres@%2Frun%2Fpostgresql/db` is libpq's form (psql and psycopg accept it, and
    `python -m revos_schema.localdb url` prints it); django-environ would keep the host encoded.
    """
    config: dict[str, Any] = env.db_url_config(url)
    config["HOST"] = unquote(config["HOST"])
    return config


DATABASES = {
    "default": _db_config(
        env.str("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/postgres")
    )
}
_target_url = env.str("TARGET_DATABASE_URL", default="")
if _target_url:
    DATABASES["target"] = _db_config(_target_url)
else:
    # Same server and database as the app: the test runner must not create it twice.
    DATABASES["target"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
# Keep app database connections between requests (opening one costs a new server backend);
# the health check replaces one that died while idle.
for _alias in DATABASES:
    DATABASES[_alias].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES[_alias].setdefault("CONN_HEALTH_CHECKS", True)
DATABASE_ROUTERS = ["revos_schema.routers.TargetRouter"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# The builder (builder/) reads these through revos_schema.services.builder_settings().
WF106_TARGET_SCHEMA = env.str("WF106_TARGET_SCHEMA", default="public")
if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", WF106_TARGET_SCHEMA):
    raise ImproperlyConfigured("WF106_TARGET_SCHEMA must be a lower-case snake_case identifier.")
if WF106_TARGET_SCHEMA != "public":
    # The ledger model names its table unqualified; find it in the target schema first.
    DATABASES["target"].setdefault("OPTIONS", {})["options"] = (
        f"-c search_path={WF106_TARGET_SCHEMA},public"
    )
WF106_LOCK_TIMEOUT_MS = env.int("WF106_LOCK_TIMEOUT_MS", default=5_000)
WF106_STATEMENT_TIMEOUT_MS = env.int("WF106_STATEMENT_TIMEOUT_MS", default=120_000)
# Pooled connections to the target database, per process.
WF106_TARGET_POOL_SIZE = env.int("WF106_TARGET_POOL_SIZE", default=4)
WF106_TARGET_POOL_TIMEOUT_S = env.float("WF106_TARGET_POOL_TIMEOUT_S", default=5.0)
WF106_MAX_BODY_BYTES = env.int("WF106_MAX_BODY_BYTES", default=1024 * 1024)
# Hold every request for an approver (as the `review` profile does), and whether a submitter may
# approve or reject their own request (a single-operator install; off: four eyes).
WF106_REQUIRE_APPROVAL = env.bool("WF106_REQUIRE_APPROVAL", default=False)
WF106_ALLOW_SELF_APPROVAL = env.bool("WF106_ALLOW_SELF_APPROVAL", default=False)
# Django refuses larger bodies itself (RequestDataTooBig), and the webhook answers 400.
DATA_UPLOAD_MAX_MEMORY_SIZE = WF106_MAX_BODY_BYTES
# What one schema version may describe (builder.schema.limits.Limits, whose defaults these are):
# a request over one is blocked before it reaches the target.
WF106_MAX_TABLES = env.int("WF106_MAX_TABLES", default=1_000)
WF106_MAX_COLUMNS_PER_TABLE = env.int("WF106_MAX_COLUMNS_PER_TABLE", default=1_600)
WF106_MAX_COLUMNS = env.int("WF106_MAX_COLUMNS", default=32_000)
WF106_MAX_INDEXES_PER_TABLE = env.int("WF106_MAX_INDEXES_PER_TABLE", default=32)
WF106_MAX_INDEXES = env.int("WF106_MAX_INDEXES", default=8_000)
WF106_MAX_STATEMENTS = env.int("WF106_MAX_STATEMENTS", default=16_000)
_LIMITS = (
    WF106_MAX_TABLES,
    WF106_MAX_COLUMNS_PER_TABLE,
    WF106_MAX_COLUMNS,
    WF106_MAX_INDEXES_PER_TABLE,
    WF106_MAX_INDEXES,
    WF106_MAX_STATEMENTS,
)
if min(_LIMITS) < 1:
    raise ImproperlyConfigured("The WF106_MAX_* limits must be positive integers.")
# The largest share of the target's shared lock table that one apply may hold until its COMMIT
# (builder.db.locks); a larger apply is refused before it runs.
WF106_MAX_LOCK_SHARE = env.float("WF106_MAX_LOCK_SHARE", default=0.3)
if not 0 < WF106_MAX_LOCK_SHARE <= 1:
    raise ImproperlyConfigured("WF106_MAX_LOCK_SHARE must be a number above 0 and at most 1.")

# WF11 events (revos_schema.delivery): where they are sent, signed with the Standard Webhooks
# secret (`whsec_<base64>`). Without a URL, events are kept, shown as not delivered.
WF11_WEBHOOK_URL = env.str("WF11_WEBHOOK_URL", default="")
WF11_WEBHOOK_SECRET = env.str("WF11_WEBHOOK_SECRET", default="")
if WF11_WEBHOOK_URL:
    _receiver = urlsplit(WF11_WEBHOOK_URL)
    if _receiver.scheme not in ("http", "https") or not _receiver.hostname:
        raise ImproperlyConfigured("WF11_WEBHOOK_URL must be an http:// or https:// URL.")
    try:
        if not WF11_WEBHOOK_SECRET.startswith("whsec_"):
            raise ValueError("no whsec_ prefix")
        Webhook(WF11_WEBHOOK_SECRET)
    except (ValueError, EmptyWebhookSecretError) as exc:
        raise ImproperlyConfigured(
            "WF11_WEBHOOK_URL needs WF11_WEBHOOK_SECRET, a secret of the form whsec_<base64>."
        ) from exc
# Connect and read timeout of the attempt made during a request (it delays that answer at most
# about twice this), and of deliver_events' attempts.
WF11_REQUEST_TIMEOUT_S = env.float("WF11_REQUEST_TIMEOUT_S", default=2.0)
WF11_WORKER_TIMEOUT_S = env.float("WF11_WORKER_TIMEOUT_S", default=10.0)
# Failed attempts are retried after WF11_RETRY_BASE_S, then twice as long each time, up to
# WF11_RETRY_MAX_S; after WF11_MAX_ATTEMPTS attempts the event is dead (an operator may re-send).
WF11_MAX_ATTEMPTS = env.int("WF11_MAX_ATTEMPTS", default=12)
WF11_RETRY_BASE_S = env.float("WF11_RETRY_BASE_S", default=30.0)
WF11_RETRY_MAX_S = env.float("WF11_RETRY_MAX_S", default=3_600.0)
if min(WF11_REQUEST_TIMEOUT_S, WF11_WORKER_TIMEOUT_S, WF11_MAX_ATTEMPTS) <= 0:
    raise ImproperlyConfigured("The WF11 timeouts and WF11_MAX_ATTEMPTS must be positive.")
if not 0 <= WF11_RETRY_BASE_S <= WF11_RETRY_MAX_S:
    raise ImproperlyConfigured("WF11_RETRY_BASE_S must be at least 0 and at most WF11_RETRY_MAX_S.")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        *(["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "revos-schema WF106 API",
    "DESCRIPTION": (
        "Turn a declarative description of tables into safe, idempotent multi-tenant "
        "PostgreSQL schema. Authenticate with `Authorization: Token <key>`; the account needs "
        "the permission `revos_schema.submit_schema`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # The docs page uses the bundled Swagger UI: no CDN is needed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Production security: on unless DEBUG (each can be turned off for a plain-HTTP loopback setup,
# e.g. the benchmarks, with SECURE_SSL_REDIRECT=0).
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Preloading commits the whole registered domain and its subdomains to HTTPS in browsers, for
# months: the owner of the domain opts in (SECURE_HSTS_PRELOAD=1), so `check --deploy` need not
# warn that this service does not (security.W021).
SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    # Only behind a proxy that sets X-Forwarded-Proto itself and strips it from clients.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="WARNING")},
}
