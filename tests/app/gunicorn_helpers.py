"""gunicorn started as production starts it, `gunicorn -c gunicorn.conf.py revos_schema.wsgi`.

The process handling (start, wait until it answers, stop) is `test_api_concurrency`'s; what
differs is the command: the repository's configuration file, so that the tests exercise the
settings the README recommends. The server sees the test database, so the tests that use it
need committed rows: `pytest.mark.django_db(transaction=True)`.
"""

from __future__ import annotations

import http.client
import os
import runpy
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from revos_schema.envvars import environment_without_settings
from revos_schema.gunicorn_worker import CLIENT_TIMEOUT_ENV
from tests.app.test_api_concurrency import (
    PROJECT_ROOT,
    REQUEST_TIMEOUT_S,
    Server,
    database_url,
    free_port,
    serve,
)

CONFIG_FILE = PROJECT_ROOT / "gunicorn.conf.py"


def recommended_settings() -> dict[str, Any]:
    """The settings that gunicorn.conf.py defines (a gunicorn configuration is a Python file)."""
    return {k: v for k, v in runpy.run_path(str(CONFIG_FILE)).items() if not k.startswith("_")}


@contextmanager
def recommended_gunicorn(tmp_path: Path, *options: str, **environment: str) -> Iterator[Server]:
    """Serve the app with gunicorn.conf.py on a free loopback port until the block ends.

    `options` are added to the command line (they override the file); `environment` to the
    server's environment, e.g. `WF106_TARGET_SCHEMA` or `WF106_CLIENT_TIMEOUT_S` (the worker's
    own setting, else its default: not the one of the shell that runs the tests).
    """
    port = free_port()
    env = environment_without_settings()
    env.pop(CLIENT_TIMEOUT_ENV, None)
    env.update(
        DJANGO_SETTINGS_MODULE="revos_schema.settings",
        DATABASE_URL=database_url(),
        SECRET_KEY="gunicorn-test-" + os.urandom(16).hex(),
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="0",
        PYTHONPATH=str(PROJECT_ROOT),
        **environment,
    )
    command = [sys.executable, "-m", "gunicorn", "-c", str(CONFIG_FILE)]
    command += ["--bind", f"127.0.0.1:{port}", *options]
    # gunicorn 27 opens a control socket at a fixed path shared by every instance.
    command += ["--no-control-socket", "revos_schema.wsgi"]
    with serve(command, env, port, tmp_path / "gunicorn.log") as server:
        yield server


def post_chunked(
    port: int, path: str, chunks: Iterable[bytes], headers: dict[str, str]
) -> tuple[int, bytes]:
    """POST `chunks` with `Transfer-Encoding: chunked` and no Content-Length; return the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        framing = {"Transfer-Encoding": "chunked"}
        conn.request(
            "POST", path, body=iter(chunks), headers=headers | framing, encode_chunked=True
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def pieces(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """Cut `body` into chunks of `size` bytes (the last one shorter)."""
    return (body[i : i + size] for i in range(0, len(body), size))
