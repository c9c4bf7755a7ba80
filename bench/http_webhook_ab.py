"""A/B of the webhook's noop path between git revisions: latency, throughput, CPU per request.

For each revision given (`HEAD`, a commit, a branch; `.` is the working tree), a `git worktree`
is checked out in a temporary directory and gets a scratch database of its own, migrated by that
revision. The runs then take turns, rotating the order each round (the VM's speed drifts during
a run and should favour no revision): per run, a fresh gunicorn (the settings of
`bench/http_webhook.py`) from that revision's tree, one request for the foundation fixture
(applied in the first round), then `--noops` sequential noops on one connection after 20
warm-up ones (p50), then `--requests` noops from 8 client threads (requests/s), with the CPU
the workers and all `postgres` processes spent per request meanwhile. Printed: the median over
the rounds of each, and every run's p50 and requests/s. Every revision runs with this
checkout's venv.

    .venv/bin/python bench/http_webhook_ab.py 5e7b7ce HEAD --rounds 3

No target: this compares revisions on the same machine at the same time, which the absolute
numbers of separate runs cannot do on this VM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import subprocess
import tempfile
from pathlib import Path

import http_webhook as h
from _common import ROOT, load_fixture, print_header, print_table, scratch_database


def worktree(stack: contextlib.ExitStack, revision: str, parent: Path) -> Path:
    """Return a checkout of `revision` (ROOT itself for `.`), removed when `stack` closes."""
    if revision == ".":
        return ROOT
    path = parent / f"rev-{len(list(parent.iterdir()))}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), revision],
        check=True,
    )
    stack.callback(
        subprocess.run,
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
        check=False,
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("revisions", nargs="*", help="git revisions; '.' is the working tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--noops", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1_200)
    args = parser.parse_args()
    if not args.revisions:  # as `make bench` runs it
        print("http_webhook_ab.py compares git revisions: give them, e.g. `5e7b7ce HEAD`.")
        return
    h.NOOP_REPEAT, h.THROUGHPUT_TOTAL = args.noops, args.requests
    body = json.dumps(load_fixture("foundation_v001.json")).encode()
    secret = "bench-" + secrets.token_hex(24)
    runs: dict[str, list[tuple[float, float, dict[str, float]]]] = {r: [] for r in args.revisions}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        trees, setup = {}, {}
        for revision in args.revisions:
            trees[revision] = worktree(stack, revision, Path(tmp))
            dsn = stack.enter_context(scratch_database("bench_ab"))
            if not setup:
                print_header("Webhook noop A/B between revisions", conninfo=dsn)
            h.ROOT = trees[revision]  # where the server and manage.py run from
            env = h.server_env(h.database_url(dsn), "bench_http_noop", secret)
            h.manage(env, "migrate", "--noinput")
            setup[revision] = (env, h.create_token(env))
        log = Path(tmp) / "gunicorn.log"
        for i in range(args.rounds):
            for k in range(len(args.revisions)):
                revision = args.revisions[(i + k) % len(args.revisions)]
                env, token = setup[revision]
                h.ROOT = trees[revision]
                # Applied in the revision's first round, a noop in the later ones.
                noops = h.noop_runs(env, log, token, body, first="applied" if i == 0 else "noop")
                runs[revision].append((h.percentile(noops.latency, 50), noops.rps, noops.cpu_ms))
                print(f"round {i + 1}: {revision} done", flush=True)
    median = statistics.median
    print(
        f"\n{args.rounds} rounds; {args.noops} sequential noops (p50), {args.requests} noops "
        f"from {h.CLIENTS} clients (req/s); CPU per request of the throughput run\n"
    )
    print_table(
        [
            "revision",
            "p50 ms",
            "req/s",
            "worker CPU ms",
            "postgres CPU ms",
            "p50 per run",
            "req/s per run",
        ],
        [
            [
                revision,
                median(r[0] for r in rs),
                median(r[1] for r in rs),
                median(r[2]["server"] for r in rs),
                median(r[2]["postgres"] for r in rs),
                " ".join(f"{r[0]:.1f}" for r in rs),
                " ".join(f"{r[1]:.0f}" for r in rs),
            ]
            for revision, rs in runs.items()
        ],
    )


if __name__ == "__main__":
    main()
