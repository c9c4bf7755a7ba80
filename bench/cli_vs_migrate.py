"""Command line versus `manage.py migrate`: this project's commands against what a Django user runs.

Whole processes, wall clock from start to exit (the child's CPU time is printed beside it), on
the foundation fixture (tests/fixtures/foundation_v001.json of `--repo`, 10 tables):

1. apply: `manage.py schema_apply FILE` into a fresh empty target database, versus the Django
   peer project's `manage.py migrate` on a fresh empty database. Target: at most 0.7x.
2. preview: `manage.py schema_preview FILE` (prints the SQL, executes nothing), versus the same
   `migrate` on a fresh empty database. Target: at most 0.7x.
3. noop: `schema_apply FILE` again on a target where it is already applied (answered `noop`),
   versus `migrate` on a database already at head. Target: at most 0.5x.
4. Fixed costs (report only): `python -c pass`, and `django.setup()` of this project (its
   settings, as the commands load them) and of the peer project, each also as a fraction of the
   same run's no-op `migrate`: what any command of that project pays before its own work.

The Django peer project is the peer benchmark's (/work/shared/peers-bench, or `--peers`): the same
ten tables as models with `db_table`, `Meta.indexes` and `db_default`, `0001_initial` made by
`makemigrations`, `0002_rls` a RunSQL enabling row level security and a policy per table, and
only that app in INSTALLED_APPS. gen.py's own main() also builds an Alembic project, which needs
packages this project does not depend on, so this script loads gen.py from a copy and calls only
its foundation-schema functions for Django (`foundation_spec`, `emit_django`). The result is
cached in $TMPDIR/bench_cli_peers_<key>, keyed by gen.py, the fixture, the Python and Django.

Method (the peer benchmark's):
- Every fresh database is created before the timed calls of a measurement (one per call of
  that side, warm-up included, then a CHECKPOINT), so CREATE/DROP DATABASE is never timed.
- The two sides alternate (A B A B ...) after one uncounted warm-up call each; the ratio is the
  median of the per-pair ratios, which is steadier than the ratio of the medians on a machine
  whose speed drifts.
- Both projects run byte-compiled: the generated project and `--repo`'s packages are compiled
  (compileall, untimed) first. With PYTHONDONTWRITEBYTECODE=1, as in some environments, a module
  whose cached bytecode is missing or stale would otherwise be recompiled by every call.
- Every timed call is checked: exit code 0; afterwards each database it used holds the fixture's
  tables in `public`, all with row level security enabled; the apply answers `applied` and the
  noop `noop`; the preview's SQL enables row level security on every table; the peer's no-op
  `migrate` reports nothing to apply.
- The children get only PATH, HOME, locale, TMPDIR and PYTHONDONTWRITEBYTECODE from the caller,
  plus their settings: this project DATABASE_URL (a scratch app database, migrated once, untimed),
  TARGET_DATABASE_URL, a random SECRET_KEY and DEBUG=0; the peer BENCH_DB, PGHOST and PGPORT
  (its settings connect as user postgres without a password).

`--runs` repeats all of it; each run prints its table, then the medians over the runs are
printed and judged. Scratch databases are named `bench_cli_*` and are dropped, whatever happens.

    .venv/bin/python bench/cli_vs_migrate.py [--repo CHECKOUT] [--runs 3] [-n 7] [--dsn URL]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any
from urllib.parse import urlsplit

import psycopg
from _common import DEFAULT_URL, ROOT, print_header, print_table, python_speed_ms, verdict
from psycopg import sql

FIXTURE = Path("tests") / "fixtures" / "foundation_v001.json"
PEERS = Path("/work/shared/peers-bench")
TARGETS = {"apply": 0.7, "preview": 0.7, "noop": 0.5}
CALL_TIMEOUT_S = 600
# What the children inherit from the caller; everything that configures either project is set
# explicitly, so a DATABASE_URL or DJANGO_SETTINGS_MODULE of the caller cannot leak in.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONDONTWRITEBYTECODE")


# ---------------------------------------------------------------- databases


class Server:
    """The PostgreSQL server of `--dsn`; remembers every database it created, to drop them."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.prefix = f"bench_cli_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self.counter = 0
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        self.host = str(params.get("host") or "127.0.0.1")
        self.port = str(params.get("port") or "5432")

    def url(self, name: str) -> str:
        """Return `--dsn` (a postgresql:// URL) with its database replaced by `name`."""
        return urlsplit(self.dsn)._replace(path="/" + name).geturl()

    def create(self, label: str, count: int = 1) -> list[str]:
        """Create `count` empty databases, then CHECKPOINT, so a timed call flushes none of it."""
        names = []
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for _ in range(count):
                self.counter += 1
                name = f"{self.prefix}_{label}{self.counter}"
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                self.created.append(name)
                names.append(name)
            conn.execute("CHECKPOINT")
        return names

    def drop(self, names: Iterable[str]) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name in list(names):
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                conn.execute(drop.format(sql.Identifier(name)))
                self.created.remove(name)

    def rls_tables(self, name: str) -> int:
        """Return how many tables of `public` in database `name` have row level security on."""
        query = """
            SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relrowsecurity
        """
        with psycopg.connect(self.url(name)) as conn:
            row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


# ---------------------------------------------------------------- timed processes


@dataclass(frozen=True)
class Sample:
    wall_ms: float
    cpu_ms: float


@dataclass
class Side:
    """One command of a measurement.

    `fresh` names the environment variable that receives, per call, the next database of a pool
    made beforehand (`url`: as a postgresql:// URL, else as a bare name); `check` returns what is
    wrong with a call's standard output, or None.
    """

    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    check: Callable[[str], str | None] = lambda _out: None
    fresh: str | None = None
    url: bool = True
    pool: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)


def call(side: Side, server: Server) -> Sample:
    """Run `side` once; return its wall and CPU time, or exit if it failed."""
    env = dict(side.env)
    if side.fresh:
        name = side.pool[len(side.used)]
        side.used.append(name)
        env[side.fresh] = server.url(name) if side.url else name
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        # Detached from the terminal, as the peer benchmark's timer starts it: a Ctrl-C reaches
        # this script only, which then stops the child itself.
        process = subprocess.Popen(
            side.argv,
            cwd=side.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=CALL_TIMEOUT_S)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall_ms = (time.perf_counter() - started) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if code != 0:
        raise SystemExit(f"{side.label}: exit code {code}\n{stdout[-2000:]}\n{stderr[-3000:]}")
    problem = side.check(stdout)
    if problem:
        raise SystemExit(f"{side.label}: {problem}\n{stdout[-2000:]}\n{stderr[-2000:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(wall_ms, cpu_s * 1000)


def alternate(sides: Sequence[Side], server: Server, pairs: int) -> list[list[Sample]]:
    """One uncounted warm-up call of each side, then `pairs` rounds A B (C ...); the samples."""
    samples: list[list[Sample]] = [[] for _ in sides]
    for i in range(1 + pairs):
        for side, kept in zip(sides, samples, strict=True):
            sample = call(side, server)
            if i:
                kept.append(sample)
    return samples


@dataclass(frozen=True)
class Pairing:
    """The result of one A-versus-B measurement, in milliseconds."""

    a: list[Sample]
    b: list[Sample]

    @property
    def ratios(self) -> list[float]:
        return [x.wall_ms / y.wall_ms for x, y in zip(self.a, self.b, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @staticmethod
    def wall(samples: list[Sample]) -> float:
        return statistics.median(s.wall_ms for s in samples)

    @staticmethod
    def cpu(samples: list[Sample]) -> float:
        return statistics.median(s.cpu_ms for s in samples)


def measure_pair(a: Side, b: Side, server: Server, pairs: int, tables: int) -> Pairing:
    """Time A against B; fresh databases for the sides that need them, checked, then dropped."""
    sides = (a, b)
    for index, side in enumerate(sides):
        side.used = []
        side.pool = server.create("ab"[index], 1 + pairs) if side.fresh else []
    try:
        samples = alternate(sides, server, pairs)
        for side in sides:
            for name in side.used:
                found = server.rls_tables(name)
                if found != tables:
                    raise SystemExit(
                        f"{side.label}: database {name} has {found} tables with row level "
                        f"security in public, expected {tables}"
                    )
    finally:
        for side in sides:
            server.drop(side.pool)
            side.pool = []
    return Pairing(samples[0], samples[1])


# ---------------------------------------------------------------- checks of a call's output


def envelope_status(want: str) -> Callable[[str], str | None]:
    def check(stdout: str) -> str | None:
        try:
            status = json.loads(stdout)["result"]["status"]
        except (ValueError, KeyError, TypeError):
            return "the output is not a response envelope"
        return None if status == want else f"status {status!r}, expected {want!r}"

    return check


def preview_check(tables: int) -> Callable[[str], str | None]:
    def check(stdout: str) -> str | None:
        found = stdout.count("ENABLE ROW LEVEL SECURITY")
        return None if found == tables else f"{found} tables get row level security, not {tables}"

    return check


def peer_noop_check(stdout: str) -> str | None:
    return None if "No migrations to apply." in stdout else "migrate applied something"


# ---------------------------------------------------------------- set-up


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run an untimed set-up command; return its standard output, or exit if it failed."""
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr}")
    return result.stdout


def compile_packages(root: Path) -> None:
    """Byte-compile the packages at the top of `root` (compileall skips up-to-date files)."""
    packages = sorted(str(p) for p in root.iterdir() if (p / "__init__.py").is_file())
    if packages:
        run([sys.executable, "-m", "compileall", "-q", *packages], root, dict(os.environ))


def load_gen(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("peers_gen", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [n for n in ("foundation_spec", "emit_django", "GEN_DB") if not hasattr(module, n)]
    if missing:
        raise SystemExit(f"{path} has no {', '.join(missing)}: the peer benchmark changed")
    return module


def peer_project(peers: Path, fixture: Path, server: Server) -> Path:
    """Return the generated Django peer project of `fixture` (made once, then cached)."""
    gen_py = peers / "gen.py"
    key = hashlib.sha256()
    for part in (
        gen_py.read_bytes(),
        fixture.read_bytes(),
        sys.executable.encode(),
        importlib.metadata.version("django").encode(),
    ):
        key.update(hashlib.sha256(part).digest())
    cache = Path(tempfile.gettempdir()) / f"bench_cli_peers_{key.hexdigest()[:16]}"
    project = cache / "django"
    if (project / "manage.py").is_file():
        return project
    print(f"Generating the Django peer project with {gen_py} into {cache} (once)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_cli_peers_tmp_"))
    try:
        # A copy: gen.py writes beside itself, and the shared folder is read-only.
        shutil.copytree(peers, work / "peers", ignore=shutil.ignore_patterns("out", "__pycache__"))
        gen = load_gen(work / "peers" / "gen.py")
        (gen_db,) = server.create("gen")
        gen.PY = sys.executable
        gen.FIXTURE = fixture
        gen.PGHOST, gen.PGPORT = server.host, server.port
        # makemigrations reads the migration history of the database named here.
        gen.GEN_DB = gen_db
        try:
            gen.emit_django(gen.foundation_spec(), work / "django")
        finally:
            server.drop([gen_db])
        run([sys.executable, "-m", "compileall", "-q", str(work / "django")], work, {**os.environ})
        try:
            work.rename(cache)
        except OSError:  # another run made it meanwhile
            if not (project / "manage.py").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return project


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in INHERITED}


@dataclass
class Setup:
    repo: Path
    fixture: Path
    tables: int
    cli_env: dict[str, str]
    peer: Path
    peer_env: dict[str, str]
    noop_target: str
    noop_peer: str


def prepare(args: argparse.Namespace, server: Server) -> Setup:
    fixture = args.repo / FIXTURE
    tables = len(json.loads(fixture.read_text())["payload"]["tables"])
    peer = peer_project(args.peers, fixture, server)
    compile_packages(args.repo)
    (app,) = server.create("app")
    cli_env = base_env() | {
        "DATABASE_URL": server.url(app),
        "SECRET_KEY": secrets.token_urlsafe(32),
        "DEBUG": "0",
    }
    run([sys.executable, "manage.py", "migrate", "--noinput"], args.repo, cli_env)
    peer_env = base_env() | {"PGHOST": server.host, "PGPORT": server.port}
    # The no-op side's databases: the fixture applied (and migrated) once, untimed.
    noop_target, noop_peer = server.create("noop", 2)
    out = run(
        [sys.executable, "manage.py", "schema_apply", str(fixture)],
        args.repo,
        cli_env | {"TARGET_DATABASE_URL": server.url(noop_target)},
    )
    if envelope_status("applied")(out):
        raise SystemExit(f"schema_apply of {fixture} did not answer applied:\n{out[-2000:]}")
    run([sys.executable, "manage.py", "migrate"], peer, peer_env | {"BENCH_DB": noop_peer})
    for name in (noop_target, noop_peer):
        if server.rls_tables(name) != tables:
            raise SystemExit(f"database {name} does not hold the {tables} tables")
    return Setup(args.repo, fixture, tables, cli_env, peer, peer_env, noop_target, noop_peer)


# ---------------------------------------------------------------- one run


def one_run(s: Setup, server: Server, pairs: int) -> dict[str, Any]:
    py = sys.executable
    cli = [py, "manage.py"]
    migrate = Side(
        "peer migrate",
        [py, "manage.py", "migrate"],
        s.peer,
        s.peer_env,
        fresh="BENCH_DB",
        url=False,
    )
    apply = Side(
        "schema_apply",
        [*cli, "schema_apply", str(s.fixture)],
        s.repo,
        s.cli_env,
        check=envelope_status("applied"),
        fresh="TARGET_DATABASE_URL",
    )
    preview = Side(
        "schema_preview",
        [*cli, "schema_preview", str(s.fixture)],
        s.repo,
        s.cli_env,
        check=preview_check(s.tables),
    )
    noop = Side(
        "noop schema_apply",
        [*cli, "schema_apply", str(s.fixture)],
        s.repo,
        s.cli_env | {"TARGET_DATABASE_URL": server.url(s.noop_target)},
        check=envelope_status("noop"),
    )
    noop_migrate = Side(
        "peer noop migrate",
        [py, "manage.py", "migrate"],
        s.peer,
        s.peer_env | {"BENCH_DB": s.noop_peer},
        check=peer_noop_check,
    )
    result: dict[str, Any] = {}
    for key, a, b in (
        ("apply", apply, migrate),
        ("preview", preview, migrate),
        ("noop", noop, noop_migrate),
    ):
        result[key] = measure_pair(a, b, server, pairs, s.tables)
    # The fixed costs take no database; they alternate with each other.
    setup_code = "import django; django.setup()"
    fixed = [
        Side("python -c pass", [py, "-c", "pass"], s.repo, base_env()),
        Side(
            "django.setup(), this project",
            [py, "-c", setup_code],
            s.repo,
            s.cli_env | {"DJANGO_SETTINGS_MODULE": "revos_schema.settings"},
        ),
        Side(
            "django.setup(), peer",
            [py, "-c", setup_code],
            s.peer,
            s.peer_env | {"DJANGO_SETTINGS_MODULE": "benchproj.settings"},
        ),
    ]
    samples = alternate(fixed, server, pairs)
    result["fixed"] = {side.label: Pairing.wall(x) for side, x in zip(fixed, samples, strict=True)}
    result["fixed_cpu"] = {
        side.label: Pairing.cpu(x) for side, x in zip(fixed, samples, strict=True)
    }
    return result


LABELS = {
    "apply": "apply: schema_apply / migrate, fresh databases",
    "preview": "preview: schema_preview / migrate",
    "noop": "noop: schema_apply / migrate, at head",
}


def print_run(result: dict[str, Any], pairs: int) -> None:
    rows = []
    for key, label in LABELS.items():
        p: Pairing = result[key]
        rows.append(
            [
                label,
                Pairing.wall(p.a),
                Pairing.cpu(p.a),
                Pairing.wall(p.b),
                Pairing.cpu(p.b),
                f"{p.ratio:.2f}x",
                f"<= {TARGETS[key]}x",
                verdict(p.ratio <= TARGETS[key]),
                " ".join(f"{r:.2f}" for r in p.ratios),
            ]
        )
    headers = ["median of", "cli ms", "cpu ms", "migrate ms", "cpu ms", "ratio", "target"]
    print_table([f"{headers[0]} {pairs} pairs", *headers[1:], "verdict", "pairs"], rows)
    noop_migrate = Pairing.wall(result["noop"].b)
    rows = [
        [label, ms, result["fixed_cpu"][label], f"{ms / noop_migrate:.2f}"]
        for label, ms in result["fixed"].items()
    ]
    print_table([f"fixed cost, median of {pairs}", "wall ms", "cpu ms", "of noop migrate"], rows)


def print_summary(results: list[dict[str, Any]]) -> None:
    rows = []
    for key, label in LABELS.items():
        ratios = [r[key].ratio for r in results]
        ratio = statistics.median(ratios)
        rows.append(
            [
                label,
                statistics.median(Pairing.wall(r[key].a) for r in results),
                statistics.median(Pairing.wall(r[key].b) for r in results),
                " ".join(f"{v:.2f}" for v in ratios),
                f"{ratio:.2f}x",
                f"<= {TARGETS[key]}x",
                verdict(ratio <= TARGETS[key]),
            ]
        )
    headers = ["median over runs", "cli ms", "migrate ms", "ratio per run", "ratio", "target"]
    print_table([*headers, "verdict"], rows)
    rows = []
    for label in results[0]["fixed"]:
        values = [r["fixed"][label] for r in results]
        rows.append([label, " ".join(f"{v:.0f}" for v in values), statistics.median(values)])
    print_table(["fixed cost", "ms per run", "median ms"], rows)


def describe_repo(repo: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    return f"{repo} at {commit}{'+dirty' if git('status', '--short') else ''}"


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwinds through the `finally` blocks, which stop the child and drop the databases.
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--repo", type=Path, default=ROOT, help="checkout whose manage.py is timed (default: this)"
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the whole measurement")
    parser.add_argument("-n", type=int, default=7, help="timed pairs per measurement")
    parser.add_argument(
        "--dsn",
        default=DEFAULT_URL,
        help=f"postgresql:// URL of the server for the scratch databases (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--peers", type=Path, default=PEERS, help=f"the peer benchmark's folder (default {PEERS})"
    )
    args = parser.parse_args()
    if args.n < 1 or args.runs < 1:
        parser.error("-n and --runs must be at least 1")
    args.repo = args.repo.resolve()
    signal.signal(signal.SIGTERM, _terminate)
    server = Server(args.dsn)
    print_header("Command line vs manage.py migrate, foundation fixture", conninfo=args.dsn)
    print(f"repo:        {describe_repo(args.repo)}")
    print(f"django:      {importlib.metadata.version('django')}\n", flush=True)
    results = []
    try:
        setup = prepare(args, server)
        print(f"peer:        {setup.peer}\n", flush=True)
        for number in range(1, args.runs + 1):
            print(
                f"Run {number} of {args.runs} (cpu yardstick {python_speed_ms():.1f} ms)\n",
                flush=True,
            )
            results.append(one_run(setup, server, args.n))
            print_run(results[-1], args.n)
    finally:
        server.drop(list(server.created))
        print(f"(scratch databases {server.prefix}_*: {server.counter} made, all dropped)\n")
    print(f"Median over {len(results)} runs ({describe_repo(args.repo)})\n")
    print_summary(results)


if __name__ == "__main__":
    main()
