"""Route the ledger model (which lives in the target database) to the `target` alias."""

from __future__ import annotations

from typing import Any

TARGET_MODELS = {"migrationledgerentry"}


class TargetRouter:
    """Send reads and writes of target-database models to `target`; everything else to default."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "target" if model._meta.model_name in TARGET_MODELS else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "target" if model._meta.model_name in TARGET_MODELS else None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        # The ledger table is created by the builder itself, never by Django migrations, and the
        # app's own tables belong only to the default database.
        return db == "default" and model_name not in TARGET_MODELS
