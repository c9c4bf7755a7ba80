"""`manage.py schema_verify [--json]`: compare the target database with its ledger (drift).

Prints the versions the ledger says were applied, then each difference between them and the
live database on its own line (a missing index, row level security disabled, ...), and the
versions recorded without their schema, which cannot be verified. Changes nothing. Exit code 0
when there is no difference, 1 when there are (or the target cannot be reached).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError, CommandParser

from revos_schema.drift import drift_report, report_lines
from revos_schema.services import builder_settings


class Command(BaseCommand):
    # These commands serve no URL: the system checks would import the whole URLconf (DRF, the
    # API docs) for nothing. `manage.py check` runs them.
    requires_system_checks = ()

    help = (
        "Verify that the target database holds everything its ledger says was applied; exit 1 "
        "on any difference."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print {ok, differences, versions, tables, unverifiable} instead.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        target_schema = builder_settings().target_schema
        try:
            report = drift_report()
        except psycopg.Error as exc:
            raise CommandError(
                f"the target database could not be verified: {exc}", returncode=1
            ) from exc
        if options["json"]:
            self.stdout.write(json.dumps(report.to_dict(), indent=2))
        else:
            self.stdout.write("\n".join(report_lines(report, target_schema)))
        if not report.ok:
            count = len(report.differences)
            raise CommandError(
                f"{count} difference{'s' if count != 1 else ''} from the ledger", returncode=1
            )
