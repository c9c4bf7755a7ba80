"""A second opinion on a plan's SQL: the findings of Squawk (PyPI `squawk-cli`), a linter of
PostgreSQL migrations.

The builder's own risk rules decide (`builder.evolve.risk`); Squawk's findings are shown beside
them, for a reviewer. Where the `squawk` executable cannot be found, `lint` returns None and the
answers say that it did not run.

The statements of the transaction are linted as one transaction (`--assume-in-transaction`),
the steps after COMMIT on their own. Rules whose advice the apply already follows are left out:
`require-lock-timeout` and `require-statement-timeout` (the apply sets both before the script),
and, for the steps after COMMIT, `prefer-robust-stmts` (each step is re-runnable and runs on
its own, outside any transaction, by design).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ALWAYS_EXCLUDED = ("require-lock-timeout", "require-statement-timeout")
AFTER_COMMIT_EXCLUDED = ("prefer-robust-stmts",)
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Finding:
    """One finding: Squawk's rule, its level and advice, and the statement it concerns."""

    rule: str
    level: str
    message: str
    help: str
    statement: str
    after_commit: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def executable() -> str | None:
    """The `squawk` executable: on PATH, or installed beside this Python (a virtualenv's bin)."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return str(beside)
    return shutil.which("squawk")


def lint(transaction: Sequence[str], after_commit: Sequence[str] = ()) -> list[Finding] | None:
    """Squawk's findings on the statements, in their order; None where Squawk cannot run."""
    program = executable()
    if program is None:
        return None
    findings: list[Finding] = []
    for statements, later in ((transaction, False), (after_commit, True)):
        if not statements:
            continue
        found = _run(program, statements, later)
        if found is None:
            return None
        findings.extend(found)
    return findings


def _run(program: str, statements: Sequence[str], after_commit: bool) -> list[Finding] | None:
    text, starts = _script(statements)
    excluded = ALWAYS_EXCLUDED + (AFTER_COMMIT_EXCLUDED if after_commit else ())
    command = [program, "--reporter", "json", "--exclude", ",".join(excluded)]
    if not after_commit:
        command.append("--assume-in-transaction")
    try:
        # A fixed argument list without a shell; the SQL goes to standard input.
        done = subprocess.run(  # noqa: S603
            command, input=text, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
        reported = json.loads(done.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    if not isinstance(reported, list):
        return None
    return [
        Finding(
            rule=str(item.get("rule_name", "")),
            level=str(item.get("level", "")).lower(),
            message=str(item.get("message", "")),
            help=str(item.get("help") or ""),
            statement=statements[_statement_at(starts, int(item.get("line", 0)))],
            after_commit=after_commit,
        )
        for item in reported
        if isinstance(item, dict)
    ]


def _script(statements: Sequence[str]) -> tuple[str, list[int]]:
    """The statements as one script, and the (0-based) line each one starts on."""
    starts: list[int] = []
    line = 0
    parts: list[str] = []
    for statement in statements:
        starts.append(line)
        part = statement.rstrip().rstrip(";") + ";"
        parts.append(part)
        line += part.count("\n") + 2  # the statement's lines and the blank line after it
    return "\n\n".join(parts) + "\n", starts


def _statement_at(starts: list[int], line: int) -> int:
    """The index of the statement that holds 0-based `line`."""
    index = 0
    for number, start in enumerate(starts):
        if start <= line:
            index = number
    return index


def report(transaction: Sequence[str], after_commit: Sequence[str] = ()) -> dict[str, Any]:
    """`{ran, findings}` for an answer: whether Squawk ran, and what it found."""
    findings = lint(transaction, after_commit)
    return {"ran": findings is not None, "findings": [f.to_dict() for f in findings or []]}
