"""Django's PostgreSQL backend with a health check that sends no query to a quiet connection."""

from __future__ import annotations

from django.db.backends.postgresql import base

from revos_schema.db import quiet


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        """Django's check (`SELECT 1`), sent only if the connection is not `quiet`."""
        if self.connection is not None and quiet(self.connection):
            return True
        return bool(super().is_usable())
