"""Read-only admin pages for submissions, their plans, events and the target's migration ledger.

Records are written by the builder service, never by hand: nobody can add, change or delete
them here, not even a superuser. Authoring forms and approval actions come later.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import DatabaseError
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse

from revos_schema.models import MigrationLedgerEntry, SchemaEvent, SchemaPlan, SchemaSubmission


class ReadOnlyAdmin(admin.ModelAdmin):
    """An admin that shows records to users with the view permission and changes nothing."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SchemaSubmission)
class SchemaSubmissionAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "schema_version",
        "tenant_id",
        "status",
        "http_status",
        "source",
        "actor",
        "short_hash",
    )
    list_filter = ("status", "source")
    search_fields = ("schema_version", "schema_hash", "idempotency_key", "tenant_id", "actor")
    date_hierarchy = "created_at"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    ("status", "http_status"),
                    ("source", "actor"),
                    ("created_at", "updated_at"),
                    "tenant_id",
                    "schema_version",
                    "schema_hash",
                    "idempotency_key",
                    "migration_log_id",
                    "error_message",
                )
            },
        ),
        ("Request", {"fields": ("envelope",)}),
        (
            "Result",
            {
                "fields": (
                    "validation_errors",
                    "plan",
                    "normalized_schema",
                    "generated_sql",
                    "response",
                )
            },
        ),
    )

    @admin.display(description="schema hash", ordering="schema_hash")
    def short_hash(self, obj: SchemaSubmission) -> str:
        return obj.schema_hash[:12]


@admin.register(SchemaPlan)
class SchemaPlanAdmin(ReadOnlyAdmin):
    """The plans (normalized schema and SQL) that submissions share."""

    list_display = ("digest", "created_at", "submission_count")
    search_fields = ("digest",)
    date_hierarchy = "created_at"
    fields = ("digest", "created_at", "normalized_schema", "generated_sql")

    def get_queryset(self, request: HttpRequest) -> QuerySet[SchemaPlan]:
        return super().get_queryset(request).annotate(Count("submissions"))

    @admin.display(description="submissions", ordering="submissions__count")
    def submission_count(self, obj: Any) -> int:
        return int(obj.submissions__count)


@admin.register(SchemaEvent)
class SchemaEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "event_type", "submission")
    list_filter = ("event_type",)
    search_fields = ("event_type", "submission__schema_version", "submission__schema_hash")
    list_select_related = ("submission",)
    date_hierarchy = "created_at"


@admin.register(MigrationLedgerEntry)
class MigrationLedgerEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "applied_at",
        "version",
        "status",
        "tenant_id",
        "short_hash",
        "execution_ms",
        "applied_by",
    )
    list_filter = ("status",)
    search_fields = ("version", "schema_hash", "idempotency_key", "tenant_id")
    # No date_hierarchy: it would query the table before get_queryset can tell it is missing.

    @admin.display(description="schema hash", ordering="schema_hash")
    def short_hash(self, obj: MigrationLedgerEntry) -> str:
        return obj.schema_hash[:12]

    def get_queryset(self, request: HttpRequest) -> QuerySet[MigrationLedgerEntry]:
        queryset = super().get_queryset(request)
        # A fresh target has no ledger until the builder records its first migration.
        return queryset if _ledger_problem() is None else queryset.none()

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        problem = _ledger_problem()
        if problem is not None:
            self.message_user(request, problem, level=messages.WARNING)
        return super().changelist_view(request, extra_context)


def _ledger_problem() -> str | None:
    """Return why the ledger cannot be shown, or None when it can."""
    table = MigrationLedgerEntry._meta.db_table
    try:
        exists = MigrationLedgerEntry.table_exists()
    except DatabaseError as exc:
        return f"The target database cannot be reached, so the ledger cannot be shown: {exc}"
    if not exists:
        return (
            f"The target database has no {table} table yet: the builder creates it when it "
            "records its first migration."
        )
    return None
