"""`manage.py deliver_events [--loop] [--every SECONDS]`: deliver the events that are due.

One pass attempts every pending event whose time has come, oldest first, in batches of 500
(`revos_schema.delivery.deliver_due`), and stops at the first failure. Prints one line per
attempt, then the backlog: how many events are pending (and since when) and how many are dead.
`--loop` keeps running as a worker. Exit code 0; 1 when a single pass left a failure (the
receiver did not take an event).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections

from revos_schema import delivery

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Deliver the pending WF11 events that are due (one pass, or --loop as a worker)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--loop", action="store_true", help="Keep running, once every --every seconds."
        )
        parser.add_argument(
            "--every", type=float, default=5.0, help="Seconds between passes with --loop."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            if options["loop"]:
                # As before each request: a connection that broke (a restart) is replaced.
                close_old_connections()
            try:
                report = delivery.deliver_due()
            except DatabaseError as exc:
                if not options["loop"]:
                    raise CommandError(f"the app database is unavailable: {exc}") from exc
                self.stderr.write(f"the app database is unavailable: {exc}")
            except Exception as exc:
                if not options["loop"]:
                    raise
                # A worker keeps going: the event stays pending and is tried again.
                logger.exception("a delivery pass failed")
                self.stderr.write(f"a delivery pass failed: {exc}")
            else:
                self._print(report)
                if report.more:
                    continue  # a full batch: the next one at once, in the same pass
                if not options["loop"] and report.failed:
                    raise CommandError("the receiver did not take an event", returncode=1)
            if not options["loop"]:
                return
            time.sleep(options["every"])

    def _print(self, report: delivery.PassReport) -> None:
        if report.skipped:
            self.stdout.write(report.skipped)
        for webhook_id in report.delivered:
            self.stdout.write(f"{webhook_id}: delivered")
        for webhook_id, error in report.failed:
            dead = " (dead: no attempts left)" if webhook_id in report.dead else ""
            self.stdout.write(f"{webhook_id}: not delivered, {error}{dead}")
        backlog = delivery.backlog()
        since = (
            ""
            if backlog.oldest_pending is None
            else f", the oldest from {backlog.oldest_pending:%Y-%m-%d %H:%M:%S} UTC"
        )
        self.stdout.write(
            f"Delivered {len(report.delivered)} event(s). Backlog: {backlog.pending} pending"
            f"{since}; {backlog.dead} dead."
        )
