"""`manage.py schema_preview FILE`: print the SQL that applying FILE would run (nothing runs)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from builder.pipeline import Rejected
from revos_schema.management.commands._envelope import read_envelope
from revos_schema.services import prepare_request


class Command(BaseCommand):
    # These commands serve no URL: the system checks would import the whole URLconf (DRF, the
    # API docs) for nothing. `manage.py check` runs them.
    requires_system_checks = ()

    help = "Print the SQL that a schema request envelope (JSON file, or - for stdin) would run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="Request envelope JSON file, or - for standard input.")

    def handle(self, *args: Any, **options: Any) -> None:
        prepared = prepare_request(read_envelope(options["file"]))
        if isinstance(prepared, Rejected):
            errors = [issue.to_dict() for issue in prepared.issues]
            self.stdout.write(json.dumps({"validation_errors": errors}, indent=2))
            raise CommandError(f"{len(errors)} validation error(s)", returncode=1)
        self.stdout.write(prepared.migration.script)
