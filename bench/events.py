"""Event delivery to WF11: what it costs an apply over HTTP, and how fast a backlog drains.

Setup (untimed): a scratch app database `bench_events_app_*` (`manage.py migrate`, a service
account holding `revos_schema.submit_schema` with a DRF token) and, per scenario, a fresh empty
target database `bench_events_target_*` with gunicorn started on it as production starts it
(`gunicorn -c gunicorn.conf.py revos_schema.wsgi`: 2 workers x 4 threads), DEBUG=0, a random
SECRET_KEY and a random `whsec_` WF11_WEBHOOK_SECRET (the scenarios share the app database:
each tells its events apart by its own `workflow_run_id`). The receiver is `tests/receiver.py`, a
ThreadingHTTPServer in this process that verifies every delivery's Standard Webhooks signature.
The client is one keep-alive `http.client` connection; its own cost is part of every number.
gunicorn's start and the client come from bench/soak.py and bench/http_webhook.py.

1. Apply latency. The four scenarios below run side by side, each with its own gunicorn,
   target and receiver, and one client connection. 4 untimed `dry_run` previews of another
   schema warm each one; then `--requests` (60) rounds, each sending one timed apply to every
   scenario in turn (the first scenario of a round rotates from round to round and from run to
   run), so that the machine's drift touches all alike. The applies of a scenario are the
   foundation fixture (tests/fixtures/foundation_v001.json, 10 tables) as the first version,
   then versions that each add one column to `locations`: every one is a real apply that
   records a `schema_migration_applied` event. WF11_REQUEST_TIMEOUT_S=0.5 in every scenario:
   (a) baseline: no WF11_WEBHOOK_URL (events are kept, pending);
   (b) ok: a receiver that answers 204 at once;
   (c) down: nothing listens at the URL (connection refused): the first apply attempts and
       fails, the following ones do not attempt (for WF11_RETRY_BASE_S, 30 s by default, after
       a failure requests leave the receiver alone; a scenario takes a few seconds);
   (d) hang: a receiver that never answers: the first apply waits the 0.5 s timeout, the
       following ones do not attempt.
   Reported: the first apply, and the p50 and max of the following ones, with their difference
   to the baseline of the same run. Checked: every answer is 200 `applied`; its
   `audit.external_calls` lists a wf11 call exactly where one is expected (delivered, 204, in
   every answer of (b); a failed one in the first answer of (c) and (d); none otherwise); the
   receiver got exactly those deliveries, each signature verified; and the app database holds
   one `schema_migration_applied` event per apply, in the expected delivery state.
2. Backlog drain. A fresh app database and target, the receiver down, WF11_RETRY_BASE_S=0 (so
   that a failed event is due at once): `--events` (500) applies through the webhook, each of a
   new one-column table, make as many pending events. With no quiet while after a failure,
   every one of these requests attempts delivery once (refused, in about a millisecond): its
   p50 is printed. gunicorn stops, the receiver comes up on the same port, and
   `manage.py deliver_events` (one pass, as a subprocess, the same settings) is timed as a
   whole process (it goes on in batches of 500 until none is due). Then an empty pass (nothing
   due) is timed the same way: the process's start-up, subtracted for the "net" rate. Checked:
   every pass exits 0; the receiver got every event exactly once (distinct `webhook-id`s ==
   events == requests received, the same ids as the app database's events), every signature
   verified; no event is left pending or dead; the database records per event one failed
   attempt made by its request and one delivered attempt by the worker.

`--runs` repeats all of it; each run's tables are printed, then the medians over the runs.
Scratch databases are always dropped. Exit code 1 if a check failed.

    .venv/bin/python bench/events.py [--runs 3] [--requests 60] [--events 500]
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from _common import (
    ROOT,
    load_fixture,
    print_header,
    print_table,
    python_speed_ms,
    scratch_database,
    server_url,
    verdict,
)
from http_webhook import WARMUP_PREVIEW, Client, database_url
from soak import create_token, gunicorn

from revos_schema.envvars import environment_without_settings
from revos_schema.gunicorn_worker import CLIENT_TIMEOUT_ENV
from tests.receiver import Receiver

SCENARIOS = ("baseline", "ok", "down", "hang")
LABELS = {
    "baseline": "(a) no WF11 URL (baseline)",
    "ok": "(b) receiver answers 204",
    "down": "(c) receiver down (refused)",
    "hang": "(d) receiver hangs, 0.5 s timeout",
}
REQUEST_TIMEOUT_S = 0.5
WARMUP_PREVIEWS = 4
APPLIED = "schema_migration_applied"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def url_of(conninfo: str) -> str:
    """The postgresql:// URL of the scratch database `conninfo` names (the settings need a URL)."""
    name = psycopg.conninfo.conninfo_to_dict(conninfo)["dbname"]
    return database_url(server_url(), str(name))


def server_environment(app: str, target: str, secret: str, **wf11: str) -> dict[str, str]:
    """The environment of gunicorn and of the manage.py commands: only what they need."""
    env = environment_without_settings()
    env.pop(CLIENT_TIMEOUT_ENV, None)  # the worker class's own setting: its default here
    env |= {
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "revos_schema.settings",
        "DATABASE_URL": url_of(app),
        "TARGET_DATABASE_URL": url_of(target),
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "WF11_WEBHOOK_SECRET": secret,
        "WF11_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    }
    return env | {f"WF11_{key.upper()}": value for key, value in wf11.items()}


def foundation_version(i: int, run_id: str, tag: str) -> dict[str, Any]:
    """Version `i` of step 1: the foundation fixture, with columns extra_2 .. extra_i added.

    `tag` goes into the description, so that no scenario finds its plans already stored by
    another one (each apply stores its plan, as a first request for a schema does).
    """
    envelope = load_fixture("foundation_v001.json")
    envelope["meta"] = {**envelope["meta"], "workflow_run_id": run_id}
    payload = envelope["payload"]
    payload["schema_version"] = f"ev-{i:03d}"
    payload["description"] = f"Foundation Schema, bench {tag}, version {i}"
    table = next(t for t in payload["tables"] if t["name"] == "locations")
    table["columns"] += [{"name": f"extra_{k}", "type": "TEXT"} for k in range(2, i + 1)]
    return envelope


def backlog_version(i: int, run_id: str) -> dict[str, Any]:
    """Version `i` of step 2: a new one-column table (tables left out of a payload stay)."""
    return {
        "meta": {"tenant_id": "t_bench", "workflow_run_id": run_id},
        "payload": {
            "schema_version": f"bk-{i:04d}",
            "description": f"backlog table {i}",
            "tables": [{"name": f"backlog_{i:04d}", "columns": [{"name": "note", "type": "TEXT"}]}],
        },
    }


def wf11_calls(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in answer.get("audit", {}).get("external_calls", []) if c["service"] == "wf11"]


def applied(status: int, answer: dict[str, Any]) -> bool:
    return status == 200 and answer.get("result", {}).get("status") == "applied"


def send(client: Client, envelope: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
    ms, status, data = client.post(json.dumps(envelope).encode())
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {"unreadable": data[:500].decode(errors="replace")}
    return ms, status, answer


def events_of(app: str, run_id: str) -> list[tuple[str, int, str]]:
    """(delivery status, attempts, webhook-id) of the events of `run_id`, oldest first."""
    with psycopg.connect(app) as conn:
        rows = conn.execute(
            "SELECT delivery_status, attempts, id FROM revos_schema_schemaevent"
            " WHERE payload->>'workflow_run_id' = %s AND event_type = %s ORDER BY created_at",
            [run_id, APPLIED],
        ).fetchall()
    return [(status, attempts, f"msg_{pk.hex}") for status, attempts, pk in rows]


@dataclass
class Latency:
    """Step 1, one scenario of one run."""

    first: float
    rest: list[float]
    # The receiver's part: `latency_ms` of the wf11 calls the answers list (the POST alone).
    post_ms: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.rest)

    @property
    def max(self) -> float:
        return max(self.rest)


@dataclass
class Server:
    """One scenario of step 1: its receiver, its gunicorn's client, what it answered."""

    name: str
    receiver: Receiver
    run_id: str
    client: Client | None = None
    samples: list[float] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def latency_run(app: str, token: str, requests: int, run: int, tmp: Path) -> dict[str, Latency]:
    """Step 1 once: the four scenarios side by side, their applies sent in turn."""
    servers = {
        name: Server(name, Receiver(new_secret()), "wr_" + uuid.uuid4().hex) for name in SCENARIOS
    }
    with ExitStack() as stack:
        for server in servers.values():
            receiver = server.receiver
            stack.callback(receiver.stop)
            if server.name in ("ok", "hang"):
                receiver.mode = server.name
                receiver.start()
            wf11 = {} if server.name == "baseline" else {"webhook_url": receiver.url}
            target = stack.enter_context(scratch_database("bench_events_target"))
            env = server_environment(app, target, receiver.secret, **wf11)
            log = tmp / f"gunicorn-{server.name}.log"
            _, port = stack.enter_context(gunicorn(env, log))
            server.client = Client(port, token)
        # Once all are up: an idle connection is closed after gunicorn's keep-alive (2 s).
        for server in servers.values():
            for _ in range(WARMUP_PREVIEWS):
                assert server.client is not None
                server.client.expect(json.dumps(WARMUP_PREVIEW).encode(), "preview")
        for i in range(1, requests + 1):
            # Round i starts with another scenario each time, and each run shifts the rotation.
            shift = (i + run) % len(SCENARIOS)
            for name in SCENARIOS[shift:] + SCENARIOS[:shift]:
                server = servers[name]
                assert server.client is not None
                envelope = foundation_version(i, server.run_id, f"{name} {run}")
                ms, status, answer = send(server.client, envelope)
                server.samples.append(ms)
                server.answers.append((status, answer))
    results = {}
    for name, server in servers.items():
        if server.client is not None and server.client.reconnects:
            print(f"note: {LABELS[name]}: the connection was opened again", end=" ")
            print(f"{server.client.reconnects} time(s)")
        result = Latency(server.samples[0], server.samples[1:])
        result.post_ms = [c["latency_ms"] for _, a in server.answers for c in wf11_calls(a)]
        events = events_of(app, server.run_id)
        result.problems = check_latency(name, server.answers, server.receiver, events)
        results[name] = result
    return results


def check_latency(
    scenario: str,
    answers: list[tuple[int, dict[str, Any]]],
    receiver: Receiver,
    events: list[tuple[str, int, str]],
) -> list[str]:
    """What is wrong with one scenario's answers, deliveries and events (empty: all as expected)."""
    problems = []
    not_applied = [
        i for i, (status, answer) in enumerate(answers, 1) if not applied(status, answer)
    ]
    if not_applied:
        status, answer = answers[not_applied[0] - 1]
        problems.append(
            f"{len(not_applied)} answer(s) not 200 applied, e.g. #{not_applied[0]}: HTTP {status}"
            f" {json.dumps(answer)[:300]}"
        )
    calls = [wf11_calls(answer) for _, answer in answers]
    expected: Callable[[int, list[dict[str, Any]]], bool]
    if scenario == "baseline":
        expected = lambda i, c: c == []  # noqa: E731
    elif scenario == "ok":
        expected = lambda i, c: (  # noqa: E731
            len(c) == 1 and c[0]["delivered"] is True and c[0]["status_code"] == 204
        )
    else:
        error = "ConnectionRefusedError" if scenario == "down" else "no answer within"
        expected = lambda i, c: (  # noqa: E731
            c == []
            if i > 1
            else len(c) == 1 and not c[0]["delivered"] and error in c[0].get("error", "")
        )
    wrong = [i for i, c in enumerate(calls, 1) if not expected(i, c)]
    if wrong:
        problems.append(f"audit.external_calls not as expected in answer(s) {wrong[:10]}: ")
        problems[-1] += json.dumps(calls[wrong[0] - 1])[:300]
    got = receiver.received
    sent_ids = [c[0]["webhook_id"] for c in calls if c]
    # A refused connection reaches no one; a hanging receiver got the request it never answered.
    arrived = [] if scenario == "down" else sent_ids
    if [d.webhook_id for d in got] != arrived:
        problems.append(f"the receiver got {len(got)} requests, {len(arrived)} expected")
    if not all(d.verified for d in got):
        problems.append("a delivery's signature did not verify")
    if any(d.payload.get("event_type") != APPLIED for d in got):
        problems.append(f"a delivery is not a {APPLIED} event")
    if len(events) != len(answers):
        problems.append(f"{len(events)} {APPLIED} events recorded for {len(answers)} applies")
    elif [e[2] for e in events][: len(sent_ids)] != sent_ids:
        problems.append("the delivered webhook-ids are not those of the recorded events")

    def want(i: int) -> tuple[str, int]:
        """(delivery status, attempts) of the event of apply `i`."""
        if scenario == "ok":
            return ("delivered", 1)
        return ("pending", 1 if i == 1 and scenario != "baseline" else 0)

    states = [i for i, e in enumerate(events, 1) if (e[0], e[1]) != want(i)]
    if states:
        problems.append(f"events in an unexpected state (status, attempts): {states[:10]}")
    return problems


@dataclass
class Drain:
    """Step 2, one run."""

    events: int
    request_p50: float
    pass_ms: float
    startup_ms: float
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / (self.pass_ms / 1000)

    @property
    def net_rate(self) -> float:
        return self.events / (max(self.pass_ms - self.startup_ms, 1.0) / 1000)


def deliver_pass(env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `manage.py deliver_events` once; return (wall-clock ms of the process, its result)."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "manage.py", "deliver_events"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    return (time.perf_counter() - started) * 1000, result


def drain_run(count: int, log: Path) -> Drain:
    """Step 2 once: `count` pending events made through the webhook, then delivered."""
    secret = new_secret()
    receiver = Receiver(secret)  # not started yet: nothing listens at its URL
    run_id = "wr_" + uuid.uuid4().hex
    problems = []
    with (
        scratch_database("bench_events_app") as app,
        scratch_database("bench_events_target") as target,
    ):
        env = server_environment(app, target, secret, webhook_url=receiver.url, retry_base_s="0")
        token = create_token(env, "svc-bench-events")
        samples, not_applied, not_attempted = [], 0, 0
        with gunicorn(env, log) as (_, port):
            client = Client(port, token)
            for _ in range(WARMUP_PREVIEWS):
                client.expect(json.dumps(WARMUP_PREVIEW).encode(), "preview")
            for i in range(1, count + 1):
                ms, status, answer = send(client, backlog_version(i, run_id))
                samples.append(ms)
                not_applied += not applied(status, answer)
                calls = wf11_calls(answer)
                not_attempted += not (
                    len(calls) == 1 and "ConnectionRefusedError" in calls[0].get("error", "")
                )
        if not_applied:
            problems.append(f"{not_applied} backlog request(s) not answered 200 applied")
        if not_attempted:
            problems.append(f"{not_attempted} answer(s) list no refused wf11 call")
        receiver.start()
        try:
            pass_ms, result = deliver_pass(env)
            if result.returncode != 0:
                problems.append(f"deliver_events exited {result.returncode}: {result.stderr}")
            startup_ms, result = deliver_pass(env)
            if "Delivered 0 event(s). Backlog: 0 pending" not in result.stdout:
                problems.append(f"the empty pass printed {result.stdout[-300:]!r}")
        finally:
            receiver.stop()
        problems += check_drain(app, run_id, count, receiver)
    return Drain(count, statistics.median(samples), pass_ms, startup_ms, problems)


def check_drain(app: str, run_id: str, count: int, receiver: Receiver) -> list[str]:
    """What is wrong after the drain (empty: every event delivered once, signed, recorded)."""
    problems = []
    got = receiver.received
    ids = [d.webhook_id for d in got]
    if not (len(got) == len(set(ids)) == count):
        problems.append(
            f"the receiver got {len(got)} requests, {len(set(ids))} distinct webhook-ids,"
            f" for {count} events"
        )
    if not all(d.verified for d in got):
        problems.append(f"{sum(not d.verified for d in got)} signature(s) did not verify")
    events = events_of(app, run_id)
    if {e[2] for e in events} != set(ids) or len(events) != count:
        problems.append(f"{len(events)} events recorded; their ids differ from those received")
    with psycopg.connect(app) as conn:
        states: dict[str, int] = dict(
            conn.execute(
                "SELECT delivery_status, count(*) FROM revos_schema_schemaevent GROUP BY 1"
            ).fetchall()
        )
        attempts = conn.execute(
            "SELECT trigger, delivered, count(*) FROM revos_schema_eventdelivery"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    if states != {"delivered": count}:
        problems.append(f"events by delivery status: {states}")
    if attempts != [("request", False, count), ("worker", True, count)]:
        problems.append(f"attempts (trigger, delivered, count): {attempts}")
    return problems


def delta(value: float, baseline: float) -> str:
    return f"{value - baseline:+.1f}"


def post_cell(post_ms: list[int]) -> str:
    """The median `latency_ms` of the wf11 calls, and how many there were."""
    return f"{statistics.median(post_ms):g} ({len(post_ms)})" if post_ms else "-"


def checks_cell(problems: list[str]) -> str:
    return verdict(not problems)


def print_run(latency: dict[str, Latency], drain: Drain, requests: int) -> None:
    base = latency["baseline"]
    print(f"cpu yardstick {python_speed_ms():.1f} ms")
    print_table(
        [
            "scenario",
            "n",
            "first ms",
            "p50 ms (2..n)",
            "max ms (2..n)",
            "first vs (a)",
            "p50 vs (a)",
            "wf11 POST ms (calls)",
            "checks",
        ],
        [
            [
                LABELS[name],
                requests,
                result.first,
                result.p50,
                result.max,
                delta(result.first, base.first),
                delta(result.p50, base.p50),
                post_cell(result.post_ms),
                checks_cell(result.problems),
            ]
            for name, result in latency.items()
        ],
    )
    print_drain([drain])
    for name, result in latency.items():
        for problem in result.problems:
            print(f"FAIL {LABELS[name]}: {problem}")
    for problem in drain.problems:
        print(f"FAIL backlog drain: {problem}")


def print_drain(drains: list[Drain]) -> None:
    def mid(values: list[float]) -> float:
        return statistics.median(values)

    print_table(
        [
            "backlog drain",
            "events",
            "requests p50 ms",
            "pass ms",
            "start-up ms",
            "events/s",
            "events/s net",
            "checks",
        ],
        [
            [
                "receiver down, then deliver_events",
                drains[0].events,
                mid([d.request_p50 for d in drains]),
                mid([d.pass_ms for d in drains]),
                mid([d.startup_ms for d in drains]),
                mid([d.rate for d in drains]),
                mid([d.net_rate for d in drains]),
                checks_cell([p for d in drains for p in d.problems]),
            ]
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the whole measurement")
    parser.add_argument("--requests", type=int, default=60, help="timed applies per scenario")
    parser.add_argument("--events", type=int, default=500, help="pending events to drain")
    args = parser.parse_args()
    if args.runs < 1 or args.requests < 3 or args.events < 1:
        parser.error("--runs and --events must be positive, --requests at least 3")
    print_header(
        "Event delivery: apply latency with a WF11 receiver, and a backlog's drain",
        conninfo=server_url(),
    )
    latencies: list[dict[str, Latency]] = []
    drains: list[Drain] = []
    with scratch_database("bench_events_app") as app, tempfile.TemporaryDirectory() as tmp:
        token = create_token(server_environment(app, app, new_secret()), "svc-bench-events")
        for run in range(args.runs):
            print(f"Run {run + 1} of {args.runs}\n", flush=True)
            latencies.append(latency_run(app, token, args.requests, run, Path(tmp)))
            drains.append(drain_run(args.events, Path(tmp) / "gunicorn-drain.log"))
            print_run(latencies[-1], drains[-1], args.requests)
    print(f"Medians over {args.runs} run(s); cpu yardstick {python_speed_ms():.1f} ms")
    rows = []
    for name in SCENARIOS:
        per_run = [run[name] for run in latencies]
        pairs = list(zip(per_run, latencies, strict=True))
        rows.append(
            [
                LABELS[name],
                args.requests,
                statistics.median(r.first for r in per_run),
                statistics.median(r.p50 for r in per_run),
                " ".join(f"{r.p50:.1f}" for r in per_run),
                # The difference to the baseline of the same run, then the median over the runs.
                f"{statistics.median(r.first - run['baseline'].first for r, run in pairs):+.1f}",
                f"{statistics.median(r.p50 - run['baseline'].p50 for r, run in pairs):+.1f}",
                post_cell([ms for r in per_run for ms in r.post_ms]),
                checks_cell([p for r in per_run for p in r.problems]),
            ]
        )
    print_table(
        [
            "scenario",
            "n",
            "first ms",
            "p50 ms (2..n)",
            "p50 per run",
            "first vs (a)",
            "p50 vs (a)",
            "wf11 POST ms (calls)",
            "checks",
        ],
        rows,
    )
    print_drain(drains)
    failed = any(r.problems for run in latencies for r in run.values()) or any(
        d.problems for d in drains
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
