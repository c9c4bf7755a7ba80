"""The embedded PostgreSQL launcher (`python -m revos_schema.localdb`)."""

from __future__ import annotations

import os
import signal
import time

import environ
import psutil
import psycopg
import pytest

from revos_schema import localdb
from revos_schema.settings import _db_config


def test_url_names_the_socket_directory_for_django_environ_and_settings():
    url = localdb.database_url(localdb.PROJECT_ROOT / ".pgdata")

    parsed = environ.Env.db_url_config(url)
    config = _db_config(url)

    assert (parsed["NAME"], parsed["USER"], parsed["PORT"]) == ("postgres", "postgres", 5432)
    assert config["HOST"] == str(localdb.PROJECT_ROOT / ".pgdata")
    assert config["ENGINE"] == "django.db.backends.postgresql"


def test_url_is_one_that_libpq_reads_as_a_socket_directory():
    url = localdb.database_url(localdb.Path("/tmp/runtime-0/python_PostgresServer/c0a1"), port=5433)

    params = psycopg.conninfo.conninfo_to_dict(url)

    assert params == {
        "user": "postgres",
        "host": "/tmp/runtime-0/python_PostgresServer/c0a1",
        "port": "5433",
        "dbname": "postgres",
    }


def test_url_escapes_unusual_characters_in_the_path():
    url = localdb.database_url(localdb.Path("/Users/Ann Lee/my+proj/.pgdata"))

    assert " " not in url and "+" not in url
    assert _db_config(url)["HOST"] == "/Users/Ann Lee/my+proj/.pgdata"
    assert psycopg.conninfo.conninfo_to_dict(url)["host"] == "/Users/Ann Lee/my+proj/.pgdata"


def test_status_of_a_folder_without_a_server(tmp_path, capsys):
    assert localdb.status(tmp_path / "missing") is None
    assert localdb.stop(tmp_path / "missing") is False
    assert localdb.main(["status", "--pgdata", str(tmp_path)]) == localdb.EXIT_NOT_RUNNING
    assert "not running" in capsys.readouterr().out


def test_a_pid_file_left_by_a_crash_is_stale_even_if_the_pid_was_reused(tmp_path):
    # This very process holds the pid now, but it is no postgres serving that folder.
    pid_file = tmp_path / "postmaster.pid"
    fields = [os.getpid(), tmp_path, 1700000000, 5432, tmp_path, "", "1 2", "ready"]
    pid_file.write_text("".join(f"{field}\n" for field in fields))

    assert localdb.status(tmp_path) is None
    assert not pid_file.exists()


def test_a_torn_pid_file_is_stale(tmp_path):
    pid_file = tmp_path / "postmaster.pid"
    pid_file.write_text("\x00\x00\n")

    assert localdb.status(tmp_path) is None
    assert not pid_file.exists()


@pytest.mark.slow
def test_a_server_starts_is_reused_survives_a_crash_and_stops(tmp_path):
    pgdata = tmp_path / "pgdata"
    try:
        first = localdb.start(pgdata)
        with psycopg.connect(first.url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        assert localdb.start(pgdata).pid == first.pid  # reused, not restarted

        os.kill(first.pid, signal.SIGKILL)  # a crash: postmaster.pid stays behind
        _wait_until_gone(first.pid)
        second = localdb.start(pgdata)
        assert second.pid != first.pid
        with psycopg.connect(second.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        assert localdb.stop(pgdata) is True
        assert localdb.status(pgdata) is None
        assert localdb.stop(pgdata) is False
    finally:
        localdb.stop(pgdata)


def _wait_until_gone(pid: int) -> None:
    """Wait until `pid` has exited (a zombie that no parent reaps, as in containers, counts)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still running")
