"""The webhook over HTTP: `POST /wf106/schema-builder` through gunicorn, timed by a client.

Setup (untimed): a scratch app database (`manage.py migrate`, a service account holding
`revos_schema.submit_schema` with a DRF token) and gunicorn (`revos_schema.wsgi:application`,
2 workers x 4 threads, gthread) with DEBUG=0, a random SECRET_KEY, ALLOWED_HOSTS=127.0.0.1 and
SECURE_SSL_REDIRECT=0, run from the checkout given by `--repo`, so that one script measures any
revision. Clients are threads of this process with one keep-alive `http.client` connection each;
their own cost is part of every number.

1. Noop latency: tests/fixtures/foundation_v001.json applied once, then the identical request
   sent sequentially on one connection, 20 warm-up + `--noops` (500) timed, each answered
   `noop`. Target: p50 under 10 ms.
2. Noop throughput: 8 client threads, one connection each (opened with one untimed request),
   `--requests` (2,000) noops in all; each thread stops after 60 s, so a slow machine ends early
   and its rate is what completed. Target: at least 200 requests/s.
3. Apply of a 200-table x 20-column schema (`_common.synthetic_envelope(200)`) into a fresh
   empty target database, versus psql running the same SQL on another fresh empty database.
   Per repetition: gunicorn restarted with TARGET_DATABASE_URL at the new database and warmed
   with a few previews of another schema (untimed), then the timed POST (answered `applied`);
   then the script the server applied (the ledger's `sql_script`) is run as
   `psql -X -q -v ON_ERROR_STOP=1 -1 -f FILE`, timed as a whole process, connection included
   (psql sends the file's statements one at a time). Whether the server's pooled target
   connection is open before the timed POST depends on the revision: one whose previews never
   touch the target opens it within the timed request, as psql does.
   HTTP and psql alternate; ratio = median of the per-repetition ratios (the ratio of the
   medians is printed beside it). Target: at most 1.2x.
4. The same for the foundation fixture (10 tables): report only.

`--runs` repeats all of it; each run's numbers are printed, then the medians over the runs,
which the verdicts judge. Scratch databases are named `bench_http_*` and are always dropped.

    .venv/bin/python bench/http_webhook.py [--repo /path/to/checkout] [--runs 3] [--reps 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from _common import ROOT, load_fixture, print_table, python_speed_ms, synthetic_envelope, verdict
from psycopg import sql

URL = "/wf106/schema-builder"
CLIENTS = 8
NOOP_WARMUP = 20
THROUGHPUT_LIMIT_S = 60.0
# The thread pool hands each request of a connection to any free thread; a few warm-up requests
# make it likely that the timed one runs on a thread whose database connections are open.
APPLY_WARMUP = 4
TARGET_P50_MS, TARGET_RPS, TARGET_RATIO = 10.0, 200.0, 1.2
# The warm-up previews: a schema that shares no payload with the measured ones, so the timed
# request plans its schema itself, as a first request for a payload does.
WARMUP_PREVIEW = {
    "meta": {"tenant_id": "t_bench"},
    "payload": {
        "schema_version": "0-warmup",
        "description": "warm-up preview",
        "dry_run": True,
        "tables": [{"name": "bench_warmup", "columns": [{"name": "note", "type": "TEXT"}]}],
    },
}


def database_url(dsn: str, name: str) -> str:
    """Return the postgresql:// URL `dsn` with its database replaced by `name`."""
    return urlsplit(dsn)._replace(path="/" + name).geturl()


@contextmanager
def scratch_database(dsn: str, label: str) -> Iterator[str]:
    """Create `bench_http_<label>_<random>`; yield its URL; drop it, whatever happened."""
    name = f"bench_http_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(dsn, name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


@contextmanager
def gunicorn(repo: Path, env: dict[str, str], log: Path) -> Iterator[int]:
    """Run gunicorn from `repo` until the block ends; yield its port once the webhook answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    command += ["--threads", "4", "--worker-class", "gthread"]
    # gunicorn 27 otherwise opens its control socket at one fixed path, shared by every gunicorn
    # on the machine.
    command += ["--no-control-socket", "revos_schema.wsgi:application"]
    with log.open("ab") as out:
        # Its own process group: stopping it stops its workers too, and nothing else.
        process = subprocess.Popen(
            command, cwd=repo, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("POST", URL, body=b"{}")
                if conn.getresponse().status == 401:  # refused for want of a token: it is up
                    break
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        else:
            raise SystemExit("gunicorn did not get ready")
        yield port
    except BaseException:
        print(f"gunicorn's log ends:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Client:
    """One keep-alive connection; reconnects, and counts it, if the server closed it."""

    def __init__(self, port: int, token: str) -> None:
        self.reconnects = 0
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, body: bytes) -> tuple[float, int, bytes]:
        """Send `body`; return (milliseconds until the whole answer is read, status, body)."""
        started = time.perf_counter()
        try:
            self.conn.request("POST", URL, body=body, headers=self.headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()
            self.reconnects += 1
            started = time.perf_counter()
            self.conn.request("POST", URL, body=body, headers=self.headers)
            response = self.conn.getresponse()
        data = response.read()
        ms = (time.perf_counter() - started) * 1000
        if response.will_close:  # http.client opens a new connection for the next request
            self.reconnects += 1
        return ms, response.status, data

    def expect(self, body: bytes, want: str) -> float:
        """Send `body`; return its milliseconds, or exit unless the answer's status is `want`."""
        ms, status, data = self.post(body)
        try:
            got = json.loads(data)["result"]["status"]
        except (ValueError, KeyError, TypeError):
            got = None
        if got != want:
            raise SystemExit(f"expected {want!r}, got HTTP {status}: {data[:1000]!r}")
        return ms


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def noop_part(port: int, token: str, body: bytes, noops: int, total: int) -> dict[str, Any]:
    client = Client(port, token)
    client.expect(body, "applied")
    latency = [client.expect(body, "noop") for _ in range(NOOP_WARMUP + noops)][NOOP_WARMUP:]
    clients = [Client(port, token) for _ in range(CLIENTS)]
    for each in clients:  # open every connection before the clock starts
        each.expect(body, "noop")
    counts = [0] * CLIENTS
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENTS + 1)

    def work(slot: int) -> None:
        barrier.wait()
        deadline = time.monotonic() + THROUGHPUT_LIMIT_S
        try:
            while counts[slot] < total // CLIENTS and time.monotonic() < deadline:
                clients[slot].expect(body, "noop")
                counts[slot] += 1
        except BaseException as exc:  # SystemExit included: reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"throughput run failed: {errors[0]!r}")
    return {
        "p50": percentile(latency, 50),
        "p95": percentile(latency, 95),
        "max": max(latency),
        "requests": sum(counts),
        "rps": sum(counts) / elapsed,
        "reconnects": client.reconnects + sum(c.reconnects for c in clients),
    }


def apply_pair(
    repo: Path, env: dict[str, str], dsn: str, token: str, envelope: dict[str, Any], tmp: Path
) -> tuple[float, float]:
    """One repetition of step 3 or 4: (HTTP ms, psql ms), each on a fresh empty database."""
    body = json.dumps(envelope).encode()
    warmup = json.dumps(WARMUP_PREVIEW).encode()
    with scratch_database(dsn, "target") as target:
        with gunicorn(repo, {**env, "TARGET_DATABASE_URL": target}, tmp / "log") as port:
            client = Client(port, token)
            for _ in range(APPLY_WARMUP):
                client.expect(warmup, "preview")
            http_ms = client.expect(body, "applied")
            if client.reconnects:
                raise SystemExit("the connection was not kept alive: the worker may differ")
        with psycopg.connect(target) as conn:
            query = "SELECT sql_script FROM public.schema_migrations WHERE version = %s"
            rows = conn.execute(query, [envelope["payload"]["schema_version"]]).fetchall()
    if len(rows) != 1:
        raise SystemExit(f"expected one ledger row of the applied version, found {len(rows)}")
    script = tmp / "script.sql"
    script.write_text(rows[0][0])
    with scratch_database(dsn, "psql") as baseline:
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(script)]
        started = time.perf_counter()
        result = subprocess.run([*command, "-d", baseline], capture_output=True, text=True)
        psql_ms = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise SystemExit(f"psql failed:\n{result.stderr[-3000:]}")
    return http_ms, psql_ms


def apply_part(
    repo: Path, env: dict[str, str], dsn: str, token: str, envelope: dict[str, Any], reps: int
) -> dict[str, Any]:
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps):
            pairs.append(apply_pair(repo, env, dsn, token, envelope, Path(tmp)))
    http_ms, psql_ms = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "http": statistics.median(http_ms),
        "psql": statistics.median(psql_ms),
        # Each pair runs back to back, so its ratio is less exposed than the ratio of the medians
        # to the machine's speed drifting during the run.
        "ratio": statistics.median(h / p for h, p in pairs),
        "ratio_of_medians": statistics.median(http_ms) / statistics.median(psql_ms),
        "pairs": " ".join(f"{h / p:.2f}" for h, p in pairs),
    }


def stamp(repo: Path, dsn: str) -> str:
    """Date, --repo's commit, PostgreSQL's version and the CPU yardstick, for a table's caption."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True
        ).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() + ("+dirty" if git("status", "-s") else "")
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {repo} at {commit}; PostgreSQL "
        f"{version[0] if version else '?'}\ncpu yardstick: {python_speed_ms():.1f} ms for a fixed "
        "pure-Python loop (best of 5; the machine's speed drifts: compare runs by it)"
    )


def setup(repo: Path, app_url: str) -> tuple[dict[str, str], str]:
    """Migrate the app database and create the service account; return (server env, token)."""
    # Only what the server needs: none of the caller's settings variables leak into it.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env |= {
        "PYTHONPATH": str(repo),
        "DJANGO_SETTINGS_MODULE": "revos_schema.settings",
        "DATABASE_URL": app_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        # The 200 x 20 apply takes about 3,400 locks in one transaction: more than the default
        # share of a default-configured server's lock table (WF106_MAX_LOCK_SHARE); on this
        # otherwise idle bench server it may take more.
        "WF106_MAX_LOCK_SHARE": "0.6",
    }
    create_token = (
        "from django.contrib.auth.models import Permission, User\n"
        "from rest_framework.authtoken.models import Token\n"
        "user = User.objects.create_user('svc-bench-http')\n"
        "user.user_permissions.add(Permission.objects.get(codename='submit_schema'))\n"
        "print('TOKEN=' + Token.objects.create(user=user).key)\n"
    )
    out = ""
    for args in (["migrate", "--noinput"], ["shell", "-c", create_token]):
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=repo, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"manage.py {args[0]} failed:\n{result.stdout}\n{result.stderr}")
        out = result.stdout
    return env, next(x for x in out.splitlines() if x.startswith("TOKEN=")).removeprefix("TOKEN=")


def one_run(
    args: argparse.Namespace, env: dict[str, str], token: str, log: Path
) -> dict[str, float]:
    """Steps 1 to 4 once, each table printed under its caption; return the judged numbers."""
    result: dict[str, float] = {}
    foundation = load_fixture("foundation_v001.json")
    if args.only != "apply":
        with (
            scratch_database(args.dsn, "noop") as target,
            gunicorn(args.repo, {**env, "TARGET_DATABASE_URL": target}, log) as port,
        ):
            noop = noop_part(
                port, token, json.dumps(foundation).encode(), args.noops, args.requests
            )
        result |= {"p50": noop["p50"], "rps": noop["rps"]}
        print(stamp(args.repo, args.dsn))
        keys = ("p50", "p95", "max", "requests", "rps", "reconnects")
        print_table(
            ["noop", "p50 ms", "p95 ms", "max ms", "requests", "req/s", "reconnects"],
            [[f"{args.noops} sequential, {CLIENTS} clients", *(noop[k] for k in keys)]],
        )
    if args.only != "noop":
        rows = []
        for key, label, envelope in (
            ("large", "3. 200 tables x 20 columns", synthetic_envelope(200)),
            ("foundation", "4. foundation_v001 (10 tables)", foundation),
        ):
            apply = apply_part(args.repo, env, args.dsn, token, envelope, args.reps)
            result[f"{key}_ratio"] = apply["ratio"]
            ratios = [f"{apply['ratio']:.2f}x", f"{apply['ratio_of_medians']:.2f}x"]
            rows.append([label, apply["http"], apply["psql"], *ratios, apply["pairs"]])
        print(stamp(args.repo, args.dsn))
        print_table(
            [f"apply, {args.reps} pairs", "HTTP ms", "psql ms", "ratio", "of medians", "pairs"],
            rows,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout to run the server from")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the whole measurement")
    parser.add_argument("--reps", type=int, default=5, help="HTTP/psql pairs in steps 3 and 4")
    parser.add_argument("--noops", type=int, default=500, help="timed requests of step 1")
    parser.add_argument("--requests", type=int, default=2000, help="requests of step 2")
    parser.add_argument("--only", choices=("noop", "apply"), help="run only one part")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres",
        help="postgresql:// URL of the server for the scratch databases (default: DATABASE_URL)",
    )
    args = parser.parse_args()
    if min(args.runs, args.reps, args.noops, args.requests // CLIENTS) < 1:
        parser.error(f"--runs, --reps and --noops must be positive, --requests >= {CLIENTS}")
    args.repo = args.repo.resolve()
    results = []
    with scratch_database(args.dsn, "app") as app_url, tempfile.TemporaryDirectory() as tmp:
        env, token = setup(args.repo, app_url)
        for run in range(1, args.runs + 1):
            print(f"Run {run} of {args.runs}\n", flush=True)
            results.append(one_run(args, env, token, Path(tmp) / "gunicorn.log"))
    targets = (
        ("p50", f"1. noop p50 < {TARGET_P50_MS:.0f} ms", lambda v: v < TARGET_P50_MS),
        ("rps", f"2. noop >= {TARGET_RPS:.0f} req/s", lambda v: v >= TARGET_RPS),
        ("large_ratio", f"3. 200 tables <= {TARGET_RATIO}x psql", lambda v: v <= TARGET_RATIO),
        ("foundation_ratio", "4. foundation vs psql", None),
    )
    rows = []
    for key, label, ok in targets:
        if key in results[0]:
            median = statistics.median(r[key] for r in results)
            judged = verdict(ok(median)) if ok else "report only"
            rows.append([label, " ".join(f"{r[key]:.2f}" for r in results), median, judged])
    print(f"Medians over {len(results)} run(s)\n{stamp(args.repo, args.dsn)}")
    print_table(["target", "per run", "median", "verdict"], rows)


if __name__ == "__main__":
    main()
