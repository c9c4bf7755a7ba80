"""Soak: mixed webhook traffic with injected faults, then a check that the records tell the truth.

Setup: a scratch database `bench_soak_<random>` (app and target in one database, as in the
tests), `manage.py migrate`, a service account holding `revos_schema.submit_schema` with a DRF
token, and gunicorn started as production starts it (`gunicorn -c gunicorn.conf.py
revos_schema.wsgi`: 2 workers x 4 threads), with DEBUG=0 and `WF106_STATEMENT_TIMEOUT_MS` low
so that the reconciliation at the end need not wait long.

Traffic: `--clients` threads, one keep-alive `http.client` connection each, for `--minutes`.
Each client evolves tables of its own (`soak_c<N>_<letter>`) through versions of its own
(`soak-c<N>-<n>`), and sends a random mix: the next version (`applied`; one that adds a column
or an index to a table that already holds rows, inserted by this script just before), the last
applied version again (`noop`), an invalid body (400), and the next version as a `dry_run`
(`preview`). An apply that got no answer or a 5xx is sent again until it is `applied` (or
`noop`: it had committed).

Faults, every 10 to 20 s (seeded): `pg_terminate_backend` of the workers' target connections,
or of their app-database connections, or SIGKILL of the youngest worker (gunicorn starts
another; the oldest worker lives the whole run, so its memory can be followed). The target
pool's connections are told apart by `application_name`: the pool builds its conninfo without
the URL's query parameters, so the server gets `PGAPPNAME`, which libpq reads for every
connection that names no application itself.

At the end: traffic stops, gunicorn stops, the statement timeout passes, `manage.py
reconcile_submissions` runs once; then the records are checked: no submission left
`received`; every `applied` submission points at a `success`/`reapplied` ledger row and has
one `schema_migration_applied` event; every `success` row has an `applied` submission; the
target verifies against its ledger (`verify_database`); every 5xx or dropped connection came
within a few seconds of a fault; every other answer was the expected one; the RSS of each
worker that lived the whole run grew by at most 20% after the warm-up. Exit code 1 on a FAIL.

    .venv/bin/python bench/soak.py [--minutes 5] [--clients 8] [--seed 106]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from _common import ROOT, print_header, print_table, server_url, verdict
from psycopg import sql

from builder.evolve.verify import DriftReport, verify_database
from revos_schema.envvars import environment_without_settings
from revos_schema.gunicorn_worker import CLIENT_TIMEOUT_ENV

URL = "/wf106/schema-builder"
STATEMENT_TIMEOUT_MS = 15_000
FAULT_EVERY_S = (10.0, 20.0)
# A fault explains a failed request that was in flight when it happened or that started this
# soon after it (the service retries a broken target connection for a few seconds, and a new
# worker takes a moment to boot).
NEAR_FAULT_S = 5.0
RSS_EVERY_S = 3.0
RSS_GROWTH_LIMIT = 0.20
# Tables of a client get new columns until they hold this many of their own; then a new table.
COLUMNS_PER_TABLE = 30
ROWS_PER_INSERT = 20
MIX = (("apply", 0.35), ("repeat", 0.25), ("invalid", 0.2), ("preview", 0.2))
INVALID_BODIES = (
    b"{not json",
    b"[]",
    b'{"payload": {"schema_version": "bad", "description": "no tables"}}',
    b'{"payload": {}, "payload": {}}',
    b'{"payload": {"schema_version": "bad", "description": "x", "tables": '
    b'[{"name": "t", "columns": [{"name": "c", "type": "NOT A TYPE"}]}]}}',
)
# The answers each kind of request should get; a `retry` sends again an apply that got no answer
# or a 5xx, which committed (`noop`) or not (`applied`).
EXPECTED = {
    "apply": ("applied",),
    "retry": ("applied", "noop"),
    "repeat": ("noop",),
    "invalid": ("blocked",),
    "preview": ("preview",),
}


@dataclass(frozen=True)
class Answer:
    kind: str
    http: int  # 0: no answer (the connection dropped)
    status: str  # the envelope's result.status, or the client's error
    started: float
    ended: float

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    detail: str


@dataclass
class Run:
    """What the traffic, fault and memory threads record."""

    seed: int
    answers: list[Answer] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    rss: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    inserts: int = 0
    inserts_skipped: int = 0
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


# -- the database and the server ------------------------------------------------------------


def database_url(server: str, name: str, application: str) -> str:
    """The postgresql:// URL `server` with database `name` and `application_name` set."""
    parts = urlsplit(server)
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("application_"))
    query += ("&" if query else "") + f"application_name={application}"
    return parts._replace(path="/" + name, query=query).geturl()


@contextmanager
def scratch_database(server: str) -> Iterator[str]:
    """Create `bench_soak_<random>`; yield its name; drop it, whatever happened."""
    name = f"bench_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))
        print(f"(scratch database {name} dropped)")


def server_environment(server: str, name: str) -> dict[str, str]:
    """The environment of gunicorn and of the manage.py commands: only what they need."""
    env = environment_without_settings()
    env.pop(CLIENT_TIMEOUT_ENV, None)  # the worker class's own setting: its default here
    env |= {
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "revos_schema.settings",
        "DATABASE_URL": database_url(server, name, "revos-app"),
        "TARGET_DATABASE_URL": database_url(server, name, "revos-target"),
        # The target pool's connections name no application: libpq takes this one.
        "PGAPPNAME": "revos-target",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "WF106_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
    }
    return env


def manage(env: dict[str, str], *args: str) -> str:
    """Run `manage.py args` with `env`; return its output, or exit if it failed."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {args[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def create_token(env: dict[str, str], username: str = "svc-soak") -> str:
    """Migrate the app database and create the service account; return its token."""
    manage(env, "migrate", "--noinput")
    code = (
        "from django.contrib.auth.models import Permission, User\n"
        "from rest_framework.authtoken.models import Token\n"
        f"user = User.objects.create_user({username!r})\n"
        "user.user_permissions.add(Permission.objects.get(codename='submit_schema'))\n"
        "print('TOKEN=' + Token.objects.create(user=user).key)\n"
    )
    out = manage(env, "shell", "-c", code)
    return next(x for x in out.splitlines() if x.startswith("TOKEN=")).removeprefix("TOKEN=")


@contextmanager
def gunicorn(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Serve the app as production does until the block ends; yield (master, port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
    # gunicorn 27 otherwise opens its control socket at one fixed path shared by every instance.
    command += ["--bind", f"127.0.0.1:{port}", "--no-control-socket", "revos_schema.wsgi"]
    with log.open("wb") as out:
        # Its own process group: stopping it stops its workers too, and nothing else.
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_ready(process, port)
        yield process, port
    except BaseException:
        print(f"gunicorn's log ends:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        stop_gunicorn(process)


def wait_ready(process: subprocess.Popen[bytes], port: int) -> None:
    """Return once gunicorn refuses a request without a token (it is up), or exit."""
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("POST", URL, body=b"{}")
            if conn.getresponse().status == 401:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise SystemExit("gunicorn did not get ready")


def stop_gunicorn(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful: nothing is in flight by now); SIGKILL the group if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def workers(master: int) -> dict[int, int]:
    """The live worker processes of gunicorn's master: {pid: start time in clock ticks}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it just ended
        # The fields after the command (which may hold spaces) in parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == master and fields[0] != "Z":
            found[int(entry.name)] = int(fields[19])
    return found


def rss_kib(pid: int) -> int | None:
    """VmRSS of `pid` in KiB, or None if it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), None)
    return None if line is None else int(line.split()[1])


# -- the traffic ----------------------------------------------------------------------------


class Tables:
    """The tables one client evolves, and the envelope of each of its versions."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.version = 0
        # name -> (its columns, the columns that have an index of their own)
        self.tables: dict[str, tuple[list[str], list[str]]] = {}

    def change(self, rng: random.Random) -> tuple[Tables, str | None]:
        """The next version's tables, and the existing table it changes (None: a new table)."""
        nxt = Tables(self.slot)
        nxt.version = self.version + 1
        nxt.tables = {name: (list(cols), list(idx)) for name, (cols, idx) in self.tables.items()}
        last = list(nxt.tables)[-1] if nxt.tables else None
        if last is None or len(nxt.tables[last][0]) >= COLUMNS_PER_TABLE:
            name = f"soak_c{self.slot}_{chr(ord('a') + len(nxt.tables))}"
            nxt.tables[name] = (["c1"], [])
            return nxt, None
        columns, indexed = nxt.tables[last]
        bare = [c for c in columns if c not in indexed]
        if bare and rng.random() < 0.4:
            indexed.append(rng.choice(bare))
        else:
            columns.append(f"c{len(columns) + 1}")
        return nxt, last

    def envelope(self, *, dry_run: bool = False) -> bytes:
        """The request of this version: its newest table, the one that this version changes.

        A version describes the tables it lists and leaves the others as they are, so the
        payload stays small however many tables the client has made.
        """
        newest = list(self.tables.items())[-1:]
        tables = [
            {
                "name": name,
                # Every third column has a constant default: safe on a table with rows.
                "columns": [
                    {"name": c, "type": "INTEGER", "default": 0}
                    if int(c[1:]) % 3 == 0
                    else {"name": c, "type": "TEXT"}
                    for c in columns
                ],
                "indexes": [{"columns": [c]} for c in indexed],
            }
            for name, (columns, indexed) in newest
        ]
        payload: dict[str, Any] = {
            "schema_version": f"soak-c{self.slot}-{self.version:04d}",
            "description": f"soak client {self.slot}, version {self.version}",
            "tables": tables,
        }
        if dry_run:
            payload["dry_run"] = True
        return json.dumps(
            {"meta": {"tenant_id": f"t_soak_{self.slot}"}, "payload": payload}
        ).encode()


class Client:
    """One keep-alive connection; a dropped one is answered as HTTP 0 and opened again."""

    def __init__(self, port: int, token: str, answers: list[Answer]) -> None:
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.answers = answers

    def post(self, kind: str, body: bytes) -> Answer:
        started = time.monotonic()
        try:
            self.conn.request("POST", URL, body=body, headers=self.headers)
            response = self.conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError) as exc:
            self.conn.close()  # http.client connects again for the next request
            answer = Answer(kind, 0, type(exc).__name__, started, time.monotonic())
        else:
            try:
                status = str(json.loads(data)["result"]["status"])
            except (ValueError, KeyError, TypeError):
                status = "(not an envelope)"
            answer = Answer(kind, response.status, status, started, time.monotonic())
        self.answers.append(answer)
        return answer


def client_loop(slot: int, port: int, token: str, target: str, deadline: float, run: Run) -> None:
    """Send a random mix until `deadline`; evolve this client's tables one version at a time."""
    rng = random.Random(f"{run.seed}-client-{slot}")
    client = Client(port, token, run.answers)
    applied = Tables(slot)
    pending: Tables | None = None  # the next version, until it is applied
    sent = False  # whether `pending` was sent already without being applied
    last: bytes | None = None  # the last version applied
    with psycopg.connect(target, autocommit=True) as rows:
        rows.execute("SET lock_timeout = '5s'")
        while time.monotonic() < deadline and not run.stop.is_set():
            kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
            if kind == "repeat" and last is None:
                kind = "apply"
            if kind in ("apply", "preview") and pending is None:
                pending, changed = applied.change(rng)
                if changed is not None:
                    insert_rows(rows, changed, run)
            if kind == "apply" and pending is not None:
                answer = client.post("retry" if sent else "apply", pending.envelope())
                if answer.status in ("applied", "noop"):
                    last = pending.envelope()
                    applied, pending, sent = pending, None, False
                elif answer.http == 0 or answer.http >= 500:
                    sent = True
                else:  # an unexpected refusal, counted as such: give this change up
                    applied.version, pending, sent = pending.version, None, False
            elif kind == "preview" and pending is not None:
                client.post(kind, pending.envelope(dry_run=True))
            elif kind == "repeat" and last is not None:
                client.post(kind, last)
            else:
                client.post("invalid", rng.choice(INVALID_BODIES))
            time.sleep(rng.uniform(0.1, 0.4))  # a pause, so two cores are not saturated


def insert_rows(conn: psycopg.Connection[Any], table: str, run: Run) -> None:
    """Add rows to `table`, so that the next version changes a table that holds rows."""
    insert = sql.SQL(
        'INSERT INTO {} ("tenant_id") SELECT gen_random_uuid() FROM generate_series(1, %s)'
    )
    try:
        conn.execute(insert.format(sql.Identifier("public", table)), [ROWS_PER_INSERT])
        run.inserts += 1
    except psycopg.Error:
        run.inserts_skipped += 1  # e.g. its lock was held: the version is applied all the same


# -- faults and memory ----------------------------------------------------------------------


def inject_faults(master: int, admin: str, database: str, run: Run) -> None:
    """Every 10 to 20 s until the traffic stops, one fault chosen at random."""
    rng = random.Random(f"{run.seed}-faults")
    with psycopg.connect(admin, autocommit=True) as conn:
        while not run.stop.wait(rng.uniform(*FAULT_EVERY_S)):
            kind = rng.choice(("target connections", "app connections", "SIGKILL worker"))
            if kind == "SIGKILL worker":
                alive = workers(master)
                if len(alive) < 2:
                    continue  # the last one killed is still being replaced
                # The youngest: the oldest worker lives the whole run, for the memory check.
                pid = max(alive, key=lambda p: (alive[p], p))
                at = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                detail = f"pid {pid}"
            else:
                application = "revos-target" if kind.startswith("target") else "revos-app"
                at, detail = terminate(conn, database, application)
            run.faults.append(Fault(at, kind, detail))


def terminate(conn: psycopg.Connection[Any], database: str, application: str) -> tuple[float, str]:
    """End the server's backends of `application`, once one of them runs a query (or after 3 s).

    Returns when it happened and what was ended. Waiting for a busy backend makes the fault
    land in the middle of a request more often than a blind one would.
    """
    active = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
    until = time.monotonic() + 3
    while time.monotonic() < until:
        row = conn.execute(active + " AND state = 'active'", [database, application]).fetchone()
        if row and row[0]:
            break
        time.sleep(0.02)
    at = time.monotonic()
    ended = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM ("
        "  SELECT state, pg_terminate_backend(pid) FROM pg_stat_activity"
        "  WHERE datname = %s AND application_name = %s) AS t",
        [database, application],
    ).fetchone()
    total, busy = ended if ended else (0, 0)
    return at, f"{total} backend(s), {busy} not idle"


def sample_rss(master: int, run: Run) -> None:
    """Every few seconds until the traffic stops: the RSS of every worker."""
    while True:
        now = time.monotonic()
        for pid in workers(master):
            kib = rss_kib(pid)
            if kib is not None:
                run.rss[pid].append((now, kib))
        if run.stop.wait(RSS_EVERY_S):
            return


def guarded(run: Run, target: Callable[..., object], *args: Any) -> threading.Thread:
    """A thread running `target(*args)` whose exception is kept for the main thread."""

    def body() -> None:
        try:
            target(*args)
        except BaseException as exc:
            run.errors.append(exc)
            run.stop.set()

    return threading.Thread(target=body, daemon=True)


def traffic(args: argparse.Namespace, master: int, port: int, token: str, run: Run) -> float:
    """Clients, faults and memory samples for `--minutes`; return when the traffic began."""
    target = database_url(args.server, args.database, "soak-rows")
    admin = database_url(args.server, args.database, "soak-faults")
    started = time.monotonic()
    deadline = started + args.minutes * 60
    clients = [
        guarded(run, client_loop, slot, port, token, target, deadline, run)
        for slot in range(1, args.clients + 1)
    ]
    helpers = [
        guarded(run, inject_faults, master, admin, args.database, run),
        guarded(run, sample_rss, master, run),
    ]
    for thread in clients + helpers:
        thread.start()
    for thread in clients:
        thread.join()  # each ends after its request in flight is answered
    run.stop.set()
    for thread in helpers:
        thread.join()
    if run.errors:
        raise SystemExit(f"the soak itself failed: {run.errors[0]!r}")
    return started


# -- the checks -----------------------------------------------------------------------------


def near_fault(answer: Answer, faults: list[Fault]) -> bool:
    """Whether a fault happened while `answer` was in flight or shortly before it was sent."""
    return any(answer.started - NEAR_FAULT_S <= f.at <= answer.ended for f in faults)


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def print_answers(run: Run, started: float) -> None:
    """Print the faults, then the answers by kind and status, with their latency."""
    print_table(
        ["fault at s", "kind", "what"],
        [[round(f.at - started, 1), f.kind, f.detail] for f in run.faults],
    )
    groups: dict[tuple[str, int, str], list[Answer]] = defaultdict(list)
    for answer in run.answers:
        groups[(answer.kind, answer.http, answer.status)].append(answer)
    rows: list[list[object]] = []
    for (kind, code, status), answers in sorted(groups.items()):
        ms = [a.ms for a in answers]
        near = sum(near_fault(a, run.faults) for a in answers)
        expected = "" if status in EXPECTED[kind] else "no"
        rows.append(
            [kind, code, status, expected, len(ms), percentile(ms, 50), percentile(ms, 95), near]
        )
    headers = ["kind", "HTTP", "status", "expected", "count", "p50 ms", "p95 ms", "near a fault"]
    print_table(headers, rows)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for answer in run.answers:
        by_kind[answer.kind].append(answer.ms)
    print_table(
        ["kind", "count", "p50 ms", "p95 ms", "max ms"],
        [
            [k, len(v), percentile(v, 50), percentile(v, 95), max(v)]
            for k, v in sorted(by_kind.items())
        ],
    )


def answer_checks(run: Run, started: float) -> list[list[object]]:
    """Print each 5xx or dropped request beside the latest fault before its end; the checks."""
    failed = [a for a in run.answers if a.http == 0 or a.http >= 500]
    for a in sorted(failed, key=lambda a: a.started):
        before = [f for f in run.faults if f.at <= a.ended]
        lag = before[-1].at - a.started if before else None
        if lag is None:
            when = "no fault before it"
        elif lag >= 0:
            when = f"{before[-1].kind} {lag:.1f} s after it was sent"
        else:
            when = f"sent {-lag:.1f} s after {before[-1].kind}"
        print(f"{a.started - started:6.1f} s  {a.kind} {a.http} {a.status}: {when}")
    print()
    near = sum(near_fault(a, run.faults) for a in failed)
    unexpected = [a for a in run.answers if 0 < a.http < 500 and a.status not in EXPECTED[a.kind]]
    kinds = Counter(f.kind for f in run.faults)
    return [
        ["faults injected", ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())), "report"],
        [
            f"inserts of {ROWS_PER_INSERT} rows before a version",
            f"{run.inserts} ({run.inserts_skipped} skipped)",
            "report",
        ],
        [f"5xx or dropped, within {NEAR_FAULT_S:.0f} s of a fault", near, "report"],
        [
            "5xx or dropped, not near a fault (must be 0)",
            len(failed) - near,
            verdict(len(failed) == near),
        ],
        [
            "other answers not the expected one (must be 0)",
            len(unexpected),
            verdict(not unexpected),
        ],
    ]


def memory_checks(run: Run, started: float, minutes: float) -> list[list[object]]:
    """Print each worker's RSS; return the check on those that lived the whole run."""
    times = [t for samples in run.rss.values() for t, _ in samples]
    first_round, last_round = min(times), max(times)
    # Each worker imports most of the app with its first requests: growth counts from here.
    warm = started + min(30.0, minutes * 60 * 0.2)
    rows: list[list[object]] = []
    growths = []
    for pid, samples in sorted(run.rss.items(), key=lambda item: item[1][0][0]):
        kib = [k for _, k in samples]
        lived = samples[0][0] == first_round and samples[-1][0] == last_round
        baseline = next((k for t, k in samples if t >= warm), kib[-1])
        growth = kib[-1] / baseline - 1
        if lived:
            growths.append(growth)
        span = f"{samples[0][0] - started:.0f}-{samples[-1][0] - started:.0f}"
        mib = [round(k / 1024, 1) for k in (kib[0], baseline, kib[-1], max(kib))]
        rows.append([pid, span, "yes" if lived else "no", len(kib), *mib, f"{growth:+.1%}"])
    headers = ["worker", "alive s", "whole run", "samples", "first MiB", "warm MiB"]
    print_table([*headers, "last MiB", "max MiB", "last/warm"], rows)
    ok = bool(growths) and max(growths) <= RSS_GROWTH_LIMIT
    measured = ", ".join(f"{g:+.1%}" for g in growths) or "no worker lived the whole run"
    return [[f"RSS growth after warm-up <= {RSS_GROWTH_LIMIT:.0%}", measured, verdict(ok)]]


@dataclass(frozen=True)
class Records:
    """What the app database and the target say once everything is settled."""

    # (id, status, HTTP status, version, migration_log_id, error_message) per submission
    submissions: list[tuple[str, str, int | None, str, str | None, str]]
    applied_events: Counter[str]  # submission id -> its schema_migration_applied events
    # id -> (version, status, whether the steps after COMMIT and the verification were recorded)
    ledger: dict[str, tuple[str, str, bool]]
    drift: DriftReport


def read_records(app: str, target: str) -> Records:
    with psycopg.connect(app) as conn:
        submissions = conn.execute(
            "SELECT id::text, status, http_status, schema_version, migration_log_id::text, "
            "error_message FROM revos_schema_schemasubmission"
        ).fetchall()
        events = conn.execute(
            "SELECT submission_id::text, count(*) FROM revos_schema_schemaevent "
            "WHERE event_type = 'schema_migration_applied' GROUP BY 1"
        ).fetchall()
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "SELECT id::text, version, status, metadata ? 'verification' FROM schema_migrations"
        ).fetchall()
        drift = verify_database(conn, "public")
    ledger = {row[0]: (row[1], row[2], row[3]) for row in rows}
    return Records(submissions, Counter(dict(events)), ledger, drift)


def record_checks(records: Records) -> list[list[object]]:
    """Compare the submissions, their events, the ledger and the catalog; return the checks."""
    subs, ledger, drift = records.submissions, records.ledger, records.drift
    statuses = Counter((s[1], s[2]) for s in subs)
    print_table(["submission", "HTTP", "count"], [[*k, n] for k, n in sorted(statuses.items())])
    print_table(["ledger row", "rows"], sorted(Counter(r[1] for r in ledger.values()).items()))
    received = [s for s in subs if s[1] == "received"]
    applied = [s for s in subs if s[1] == "applied"]
    unbacked = [
        s
        for s in applied
        if s[4] not in ledger or ledger[s[4]][:2] not in ((s[3], "success"), (s[3], "reapplied"))
    ]
    events_off = [s for s in applied if records.applied_events[s[0]] != 1]
    pointed = {s[4] for s in applied}
    orphans = [i for i, row in ledger.items() if row[1] == "success" and i not in pointed]
    why: Counter[str] = Counter()
    for row_id in orphans:
        version, _, recorded = ledger[row_id]
        print(f"ledger row {row_id} ({version}) says success; no applied submission points at it")
        if not recorded:
            print("  its steps after COMMIT and its verification were never recorded on it")
        for s in subs:
            if s[4] == row_id:
                print(f"  submission {s[0]}: {s[1]} ({s[2]}) {s[5][:160]!r}")
                if s[1] != "noop":
                    why[f"{s[1]} {s[2]}"] += 1
    for s in received + unbacked + events_off:
        print(f"submission {s[0]} {s[3]}: {s[1]}, ledger row {s[4]}: {ledger.get(s[4] or '')}")
    for line in drift.differences[:20] + drift.unverifiable:
        print(f"drift: {line}")
    print()
    said = ", ".join(f"{n} {status}" for status, n in sorted(why.items()))
    orphaned = f"{len(orphans)}" + (f" (their submission says: {said})" if why else "")
    return [
        ["submissions left received (must be 0)", len(received), verdict(not received)],
        [
            "applied without their success/reapplied row",
            f"{len(unbacked)} of {len(applied)}",
            verdict(not unbacked),
        ],
        ["applied without exactly one applied event", len(events_off), verdict(not events_off)],
        ["ledger success rows without an applied submission", orphaned, verdict(not orphans)],
        [
            "verify_database: differences",
            f"{len(drift.differences)} ({len(drift.versions)} versions, "
            f"{len(drift.tables)} tables)",
            verdict(drift.ok and not drift.unverifiable),
        ],
    ]


def log_summary(log: Path) -> None:
    """Print how often each exception ended a traceback in gunicorn's log (for investigation)."""
    lines = log.read_text(errors="replace").splitlines()
    ends = Counter(
        line[:140]
        for prev, line in itertools.pairwise(lines)
        if prev.startswith("  ") and not line.startswith((" ", "Traceback", "During", "The above"))
    )
    print(f"gunicorn's log: {sum('Traceback' in x for x in lines)} traceback(s)")
    for line, n in ends.most_common(12):
        print(f"  {n:4d}  {line}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the traffic runs")
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    parser.add_argument("--seed", type=int, default=106, help="seed of the mix and the faults")
    args = parser.parse_args()
    if args.minutes <= 0 or args.clients < 1:
        parser.error("--minutes must be positive and --clients at least 1")
    args.server = server_url()
    print_header("Soak: mixed webhook traffic with injected faults", conninfo=args.server)
    print(f"{args.clients} clients for {args.minutes:g} min, seed {args.seed}\n", flush=True)
    run = Run(seed=args.seed)
    with scratch_database(args.server) as name, tempfile.TemporaryDirectory() as tmp:
        args.database = name
        env = server_environment(args.server, name)
        token = create_token(env)
        log = Path(tmp) / "gunicorn.log"
        with gunicorn(env, log) as (master, port):
            started = traffic(args, master.pid, port, token, run)
        ended = time.monotonic()
        print_answers(run, started)
        checks = answer_checks(run, started) + memory_checks(run, started, args.minutes)
        log_summary(log)
        # A submission left `received` is settled as failed only once its transaction is
        # surely over: the statement timeout after it was stored.
        time.sleep(max(0.0, ended + STATEMENT_TIMEOUT_MS / 1000 + 1 - time.monotonic()))
        print(manage(env, "reconcile_submissions"))
        url = database_url(args.server, name, "soak-check")
        checks += record_checks(read_records(url, url))
    print(f"\nSoak of {args.minutes:g} min, {args.clients} clients, {len(run.answers)} requests")
    print_table(["check", "measured", "verdict"], checks)
    sys.exit(1 if any(row[2] == "FAIL" for row in checks) else 0)


if __name__ == "__main__":
    main()
