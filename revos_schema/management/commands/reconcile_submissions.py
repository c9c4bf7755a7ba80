"""`manage.py reconcile_submissions [--loop] [--every SECONDS]`: settle `received` submissions.

Each one is settled against the target's ledger (`revos_schema.reconcile`): `applied` with its
event if its apply committed, `failed` (reason `interrupted`, with a `failed` ledger row) if it
did not and is older than the statement timeout. Prints one line per settled submission and a
summary. Exit code 0; 1 if the target database cannot be reached.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections

from revos_schema.reconcile import Report, reconcile


class Command(BaseCommand):
    requires_system_checks = ()

    help = "Settle submissions left `received` (an interrupted apply) against the target's ledger."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--loop", action="store_true", help="Keep running, once every --every seconds."
        )
        parser.add_argument(
            "--every", type=float, default=60.0, help="Seconds between runs with --loop."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            if options["loop"]:
                # As before each request: a connection that broke (a restart) is replaced.
                close_old_connections()
            try:
                report = reconcile()
            except psycopg.OperationalError as exc:
                if not options["loop"]:
                    raise CommandError(f"target database unavailable: {exc}", returncode=1) from exc
                self.stderr.write(f"target database unavailable: {exc}")
            except DatabaseError as exc:
                if not options["loop"]:
                    raise
                self.stderr.write(f"the app database is unavailable: {exc}")
            else:
                self._print(report)
            if not options["loop"]:
                return
            time.sleep(options["every"])

    def _print(self, report: Report) -> None:
        for submission_id in report.applied:
            self.stdout.write(f"{submission_id}: applied (its apply committed)")
        for submission_id in report.failed:
            self.stdout.write(f"{submission_id}: failed (interrupted before its apply committed)")
        self.stdout.write(
            f"Settled {len(report.applied) + len(report.failed)} submission(s): "
            f"{len(report.applied)} applied, {len(report.failed)} failed; "
            f"{len(report.waiting)} may still commit and were left as received."
        )
