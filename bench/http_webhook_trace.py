"""Where the time of a first-request apply over HTTP goes: its phases, traced in the worker.

Runs the verdict's variant of `bench/http_webhook.py`'s step 3 (an apply of the foundation
fixture as the server's first request for that payload, after the same untimed warm-ups, on a
freshly started gunicorn with a fresh target schema) `--repeat` times, with
`bench/_trace_gunicorn.py` as gunicorn's config: it records when the request starts and ends in
the worker and when a few functions of its path start and end. Printed, per phase, the median,
minimum and maximum over the repetitions (ms):

- gunicorn, to Django: from gunicorn's `pre_request` hook to Django's WSGI handler.
- Django and DRF before authentication: from there to authentication.
- authentication: the token, its user and the submit permission (with Django's connection
  health check, the first query of the request).
- body, target connection, envelope: reading the body, borrowing the pooled target connection
  (with the pool's check), parsing the envelope and starting the ledger reads on their thread.
- planning: normalizing, hashing and rendering the schema, and parser-checking the first eighth
  of its statements (the ledger reads and the lock run on the other thread meanwhile).
- to the script: waiting for those reads, building the script message.
- the script, as the request waits: from handing the script's first part to its thread until
  the request thread has the ledger row back; meanwhile the rest of the statements are
  parser-checked, the rest is sent, and the submission is stored as `received`.
- COMMIT; then the outcome and the output envelope; storing the outcome and its event; the
  response, until Django's WSGI handler returns it to gunicorn.
- HTTP and the client: the client's wall clock minus the time from gunicorn's `pre_request`
  hook to that return (gunicorn reading the request before the hook, writing the response
  after it, the loopback, the client's `http.client`).

Also printed: the script's own time as the server measured it (the ledger's `execution_ms`,
in whole ms) and the request's time outside it (the client's wall clock minus that), as in
`bench/http_webhook.py`. No target: this explains that benchmark's apply ratio, it does not
judge it. The wrappers cost about a microsecond per call; the trace adds a file append after
each request, outside the timed span.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
from pathlib import Path

from _common import load_fixture, print_header, print_table, scratch_database
from http_webhook import apply_over_http, create_token, database_url, manage, server_env

HOOKS = Path(__file__).resolve().with_name("_trace_gunicorn.py")

# (label, from, to): phases between two events of the request's own thread.
PHASES = (
    ("gunicorn, to Django", "start request", "start __call__"),
    ("Django and DRF before authentication", "start __call__", "start authenticate"),
    ("authentication (token, user, permission)", "start authenticate", "end authenticate"),
    ("body, target connection, envelope", "end authenticate", "start _prepare"),
    ("planning (normalize, render, check the first 1/8)", "start _prepare", "end _prepare"),
    ("to the script (ledger reads, message)", "end _prepare", "start _run_script"),
    ("the script, as the request waits", "start _run_script", "end _run_script"),
    ("COMMIT", "start _commit", "end _commit"),
    ("outcome and output envelope", "end _commit", "start _store_outcome"),
    ("storing the outcome and its event", "start _store_outcome", "end _store_outcome"),
    ("the response (DRF, Django)", "end _store_outcome", "end __call__"),
)


def phases(record: dict[str, object]) -> dict[str, float]:
    """Return each phase's ms in one traced request (the events of the request's thread)."""
    events = record["events"]
    assert isinstance(events, list)
    request_thread = events[0][1]
    at = {event: t for t, thread, event in events if thread == request_thread}
    missing = {name for _, start, end in PHASES for name in (start, end)} - set(at)
    if missing:
        raise SystemExit(f"the traced request has no {sorted(missing)}: {events}")
    result = {label: at[end] - at[start] for label, start, end in PHASES}
    result["  before the script"] = at["start _run_script"] - at["start request"]
    result["  after the script"] = at["end __call__"] - at["end _run_script"]
    result["in the worker"] = at["end __call__"] - at["start request"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=10, help="repetitions (default 10)")
    args = parser.parse_args()
    envelope = load_fixture("foundation_v001.json")
    secret = "bench-" + secrets.token_hex(24)
    runs: list[dict[str, float]] = []
    with scratch_database("bench_trace") as dsn, tempfile.TemporaryDirectory() as tmp:
        print_header("Webhook over HTTP: the phases of a first-request apply", conninfo=dsn)
        db_url = database_url(dsn)
        log = Path(tmp) / "gunicorn.log"
        base_env = server_env(db_url, "bench_trace_setup", secret)
        manage(base_env, "migrate", "--noinput")
        token = create_token(base_env)
        for i in range(args.repeat):
            trace = Path(tmp) / f"trace-{i}.jsonl"
            timings = apply_over_http(
                db_url,
                dsn,
                token,
                envelope,
                secret,
                log,
                preview_first=False,
                config=HOOKS,
                extra_env={"WF106_TRACE_FILE": str(trace)},
            )
            # The timed apply is the server's last request (the warm-ups come before it).
            record = json.loads(trace.read_text().splitlines()[-1])
            if record["status"] != 200:
                raise SystemExit(f"the last traced request is not the apply: {record}")
            run = phases(record)
            run["HTTP and the client"] = timings["http"] - run["in the worker"]
            run["client wall clock"] = timings["http"]
            run["the script's own time (ledger execution_ms)"] = timings["script"]
            run["outside the script (wall clock minus execution_ms)"] = (
                timings["http"] - timings["script"]
            )
            runs.append(run)

    print(f"\nApply foundation_v001 (10 tables), first request for the payload, {len(runs)} runs")
    print("(each phase on the request's thread; ms)\n")
    rows = []
    for label in runs[0]:
        samples = [run[label] for run in runs]
        rows.append([label, statistics.median(samples), min(samples), max(samples)])
    print_table(["phase", "median ms", "min ms", "max ms"], rows)


if __name__ == "__main__":
    main()
