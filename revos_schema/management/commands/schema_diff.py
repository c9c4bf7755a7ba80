"""`manage.py schema_diff FILE [--json]`: the plan of FILE against the target database now.

Reads the target's catalog (without a lock; nothing is changed) and prints what applying FILE
would do: each operation with its risk, rule, reason and where it runs, the blockers, the notes
on what the database holds beyond the payload, what the risk gate would decide for the
envelope's profile, then the SQL. Exit code 0 whatever the plan; 2 for a file that cannot be
read or does not pass validation (the errors are printed); 1 if the target cannot be reached.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from builder.errors import UnsafeSQLError
from builder.evolve.plan import Plan
from builder.evolve.risk import Verdict
from builder.pipeline import Prepared, Rejected, plan_against, preview_verdict
from builder.sql import squawk
from revos_schema.management.commands._envelope import read_envelope
from revos_schema.preview import where_it_runs
from revos_schema.services import builder_settings, prepare_request, target_connection


class Command(BaseCommand):
    # These commands serve no URL: the system checks would import the whole URLconf (DRF, the
    # API docs) for nothing. `manage.py check` runs them.
    requires_system_checks = ()

    help = (
        "Print the plan of a schema request envelope (JSON file, or - for stdin) against the "
        "target database: operations, risk, notes, the gate's decision and the SQL. Changes "
        "nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="Request envelope JSON file, or - for standard input.")
        parser.add_argument(
            "--json",
            action="store_true",
            help='Print {"plan": [...], "risk": ..., "decision": ..., "sql": ...} instead.',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        target_schema = builder_settings().target_schema
        try:
            prepared = prepare_request(read_envelope(options["file"]))
        except UnsafeSQLError as exc:
            raise CommandError(f"the generated SQL failed its check: {exc}", returncode=1) from exc
        if isinstance(prepared, Rejected):
            raise self._rejected(prepared, as_json=options["json"])
        try:
            with target_connection() as conn:
                plan = plan_against(conn, prepared.schema, target_schema)
        except psycopg.OperationalError as exc:
            raise CommandError(f"target database unavailable: {exc}", returncode=1) from exc
        except UnsafeSQLError as exc:
            raise CommandError(f"the planned SQL failed its check: {exc}", returncode=1) from exc
        # As `schema_apply` would send it: held whatever its plan if the service holds them all.
        verdict = preview_verdict(prepared, plan, hold=settings.WF106_REQUIRE_APPROVAL)
        if options["json"]:
            self.stdout.write(json.dumps(as_json(plan, verdict), indent=2))
        else:
            self.stdout.write("\n".join(plan_lines(prepared, plan, verdict, target_schema)))

    def _rejected(self, rejected: Rejected, *, as_json: bool) -> CommandError:
        """Print the validation errors; return the error to exit with (2)."""
        errors = [issue.to_dict() for issue in rejected.issues]
        if as_json:
            self.stdout.write(json.dumps({"validation_errors": errors}, indent=2))
        else:
            self.stdout.write(f"The request does not pass validation ({len(errors)} error(s)):")
            for error in errors:
                where = error["path"] or "(the request)"
                self.stdout.write(f"  {where}: {error['message']} [{error['code']}]")
        return CommandError(f"{len(errors)} validation error(s)", returncode=2)


def as_json(plan: Plan, verdict: Verdict) -> dict[str, Any]:
    """The `--json` output: the plan's operations, risk report, decision and SQL."""
    return {
        "plan": [op.to_dict() for op in plan.operations],
        "risk": plan.report(),
        "decision": str(verdict.decision),
        "decision_reason": verdict.reason,
        "sql": plan.migration.script,
        "squawk": squawk.report(plan.transaction_statements, plan.after_commit_statements),
    }


def plan_lines(prepared: Prepared, plan: Plan, verdict: Verdict, target_schema: str) -> list[str]:
    """The plan as text, for a person."""
    schema = prepared.schema
    count = len(plan.operations)
    lines = [
        f"Plan of schema v{schema.version} against the target schema {target_schema!r}: "
        f"{count} operation{'s' if count != 1 else ''}, risk {plan.risk}.",
        "",
    ]
    if not plan.operations:
        lines += ["Nothing to change: the database already holds these tables as described.", ""]
    width = len(str(count))
    for number, op in enumerate(plan.operations, start=1):
        where = where_it_runs(op.to_dict())
        lines.append(f"{number:>{width}}. [{op.risk}] {op.description}")
        indent = " " * (width + 2)
        if op.rule:
            lines.append(f"{indent}rule: {op.rule}")
        if op.reason:
            lines.append(f"{indent}reason: {op.reason}")
        lines.append(f"{indent}runs: {where}")
    blockers = [(n, op) for n, op in enumerate(plan.operations, start=1) if op.blocker]
    lines += ["", f"Blockers ({len(blockers)}):" if blockers else "Blockers: none."]
    lines += [f"  - {n}. {op.blocker}" for n, op in blockers]
    lines += ["", f"Notes ({len(plan.notes)}):" if plan.notes else "Notes: none."]
    lines += [f"  - {note}" for note in plan.notes]
    lines += ["", *squawk_lines(plan)]
    lines += [
        "",
        f"Decision under the {prepared.envelope.validation_profile!r} profile: "
        f"{verdict.decision}. {verdict.reason}",
        "",
        "-- SQL " + "-" * 60,
        plan.migration.script,
    ]
    return lines


def squawk_lines(plan: Plan) -> list[str]:
    """Squawk's findings on the plan's SQL, or why there are none."""
    findings = squawk.lint(plan.transaction_statements, plan.after_commit_statements)
    if findings is None:
        return ["Squawk: not run (the squawk executable, PyPI squawk-cli, was not found)."]
    if not findings:
        return ["Squawk: no findings."]
    lines = [f"Squawk ({len(findings)} finding{'s' if len(findings) != 1 else ''}):"]
    for finding in findings:
        first_line = finding.statement.strip().splitlines()[0]
        lines.append(f"  - [{finding.rule}] {finding.message}")
        lines.append(f"    on: {first_line[:100]}{' ...' if len(first_line) > 100 else ''}")
        if finding.help:
            lines.append(f"    help: {finding.help}")
    return lines
