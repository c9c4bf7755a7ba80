"""`manage.py schema_apply FILE [--dry-run]`: run the webhook's service on FILE, print the envelope.

Exit code 0 for applied, noop and preview; 1 for any other status, an unreachable target database,
or an outcome that could not be stored (its envelope is printed first); 2 for an unreadable file.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError, CommandParser

from builder.status import Status
from revos_schema.management.commands._envelope import read_envelope
from revos_schema.services import OutcomeNotStored, submit_envelope

OK_STATUSES = frozenset({Status.APPLIED, Status.NOOP, Status.PREVIEW})


class Command(BaseCommand):
    # These commands serve no URL: the system checks would import the whole URLconf (DRF, the
    # API docs) for nothing. `manage.py check` runs them.
    requires_system_checks = ()

    help = "Apply a schema request envelope (JSON file, or - for stdin) and print the output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="Request envelope JSON file, or - for standard input.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Preview only: validate and render the SQL, execute nothing.",
        )
        parser.add_argument(
            "--actor", default="", help="Who is applying (stored with the request)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        envelope = read_envelope(options["file"])
        if options["dry_run"] and isinstance(envelope, dict):
            payload = envelope.get("payload")
            if isinstance(payload, dict):
                envelope = {**envelope, "payload": {**payload, "dry_run": True}}
        try:
            outcome, _submission = submit_envelope(envelope, source="cli", actor=options["actor"])
        except psycopg.OperationalError as exc:
            raise CommandError(f"target database unavailable: {exc}", returncode=1) from exc
        except OutcomeNotStored as exc:
            # The target may have changed: say what the request did before the error.
            self.stdout.write(json.dumps(exc.outcome.response, indent=2, default=str))
            raise CommandError(
                f"the request was {exc.outcome.status}, but storing that failed: {exc.__cause__}; "
                "the target database's migration ledger has the record",
                returncode=1,
            ) from exc
        self.stdout.write(json.dumps(outcome.response, indent=2, default=str))
        if outcome.status not in OK_STATUSES:
            raise CommandError(f"status {outcome.status}", returncode=1)
