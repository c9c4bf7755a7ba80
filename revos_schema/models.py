"""The app's records of schema requests, its event log, and a read-only view of the target's ledger.

`SchemaSubmission`, the `SchemaPlan` it references, and `SchemaEvent` live in the app's own
database. `MigrationLedgerEntry` is an unmanaged model over the `schema_migrations` table that
the builder creates in the TARGET database (`builder/db/ledger.py`);
`revos_schema.routers.TargetRouter` sends it to the `target` alias and Django migrations never
create or change that table.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from django.conf import settings
from django.db import connections, models, router
from django.utils import timezone

from builder.status import LedgerStatus, Status


class SchemaPlan(models.Model):
    """A normalized schema and the SQL generated for it, stored once for all its submissions.

    A service that retries, or re-sends its schema on every deploy, sends the same plan again and
    again (a noop): each submission references the plan instead of keeping another copy of it.
    Plans are content-addressed and never change.
    """

    digest = models.CharField(
        primary_key=True,
        max_length=64,
        editable=False,
        help_text="SHA-256 (hex) of the schema hash, a newline and the SQL: see digest_of.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    normalized_schema = models.JSONField()
    generated_sql = models.TextField(blank=True, default="")

    class Meta:
        verbose_name = "schema plan"

    def __str__(self) -> str:
        return f"plan {self.digest[:12]}"

    @staticmethod
    def digest_of(schema_hash: str, generated_sql: str) -> str:
        """The key of a plan: migration 0003 computes the same in SQL for the rows it moved."""
        return hashlib.sha256(f"{schema_hash}\n{generated_sql}".encode()).hexdigest()


class Decision(models.TextChoices):
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class SchemaSubmission(models.Model):
    """One schema request (webhook, admin or command line) and what became of it."""

    class Source(models.TextChoices):
        API = "api", "API"
        ADMIN = "admin", "Admin"
        CLI = "cli", "Command line"

    # The builder's statuses, and `received`: stored before the target commits an apply.
    Status = models.TextChoices(
        "Status",
        [("RECEIVED", ("received", "Received"))]
        + [(status.name, (status.value, status.label)) for status in Status],
    )

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    actor = models.TextField(blank=True, default="")
    source = models.CharField(max_length=16, choices=Source.choices)
    tenant_id = models.TextField(blank=True, default="")
    schema_version = models.TextField(blank=True, default="", db_index=True)
    schema_hash = models.TextField(blank=True, default="")
    idempotency_key = models.TextField(blank=True, default="")
    status = models.CharField(max_length=32, choices=Status.choices, default=Status.RECEIVED)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    envelope = models.JSONField(help_text="The raw request, as received.")
    # The normalized schema and its SQL, shared with the other submissions of the same plan.
    plan = models.ForeignKey(
        SchemaPlan,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="submissions",
        help_text="The normalized schema and the generated SQL (none for an unreadable request).",
    )
    response = models.JSONField(null=True, blank=True, help_text="The output envelope.")
    validation_errors = models.JSONField(default=list, blank=True)
    migration_log_id = models.UUIDField(
        null=True, blank=True, help_text="The id of the ledger row in the target database."
    )
    error_message = models.TextField(blank=True, default="")
    # Who sent it (an account of this service; the webhook's and the admin's requests have one).
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # An approver's decision on a request held for approval.
    decision = models.CharField(max_length=16, choices=Decision.choices, blank=True, default="")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "schema submission"
        permissions = (
            ("submit_schema", "Can submit schemas through the webhook"),
            ("approve_schema", "Can approve or reject pending schema migrations"),
        )
        indexes = (
            # Every applied or noop request looks for unsettled tries of itself
            # (`reconcile.settle_committed`): few rows are `received`, so this stays small.
            models.Index(
                fields=["idempotency_key"],
                condition=models.Q(status="received"),
                name="submission_received_key",
            ),
        )

    def __str__(self) -> str:
        version = self.schema_version or "(no version)"
        return f"{version}: {self.get_status_display().lower()} ({self.source})"

    @property
    def normalized_schema(self) -> Any:
        """The normalized schema of the request (None if it never got that far)."""
        return None if self.plan is None else self.plan.normalized_schema

    @property
    def generated_sql(self) -> str:
        """The SQL generated for the request ("" if none was)."""
        return "" if self.plan is None else self.plan.generated_sql


class SchemaEvent(models.Model):
    """An event for WF11 (and any other subscriber), e.g. `schema_migration_applied`.

    Written in the same transaction as the outcome it tells of (the outbox), then delivered by
    `revos_schema.delivery`: once right after that commit, and by `manage.py deliver_events`
    until the receiver takes it or `WF11_MAX_ATTEMPTS` attempts have failed (`dead`).
    """

    class Delivery(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        DEAD = "dead", "Dead"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    event_type = models.CharField(max_length=100, db_index=True)
    # Events outlive the submissions they came from: the log is an audit trail.
    submission = models.ForeignKey(
        SchemaSubmission,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="events",
    )
    payload = models.JSONField(default=dict, blank=True)
    delivery_status = models.CharField(
        max_length=16, choices=Delivery.choices, default=Delivery.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(
        default=timezone.now, help_text="When a pending event is due for its next attempt."
    )
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "schema event"
        permissions = (("resend_schemaevent", "Can re-send events and resume their delivery"),)
        indexes = (
            # The backlog that deliver_events works through, oldest due first.
            models.Index(
                fields=("next_attempt_at", "created_at"),
                condition=models.Q(delivery_status="pending"),
                name="event_pending_due",
            ),
        )

    def __str__(self) -> str:
        return f"{self.event_type} ({self.created_at:%Y-%m-%d %H:%M})"

    @property
    def webhook_id(self) -> str:
        """The `webhook-id` of every delivery of this event, retries included."""
        return f"msg_{self.pk.hex}"

    def body(self) -> bytes:
        """The JSON body every delivery of this event sends (and signs), byte for byte."""
        return json.dumps(self.payload, sort_keys=True, separators=(",", ":")).encode()


class EventDelivery(models.Model):
    """One attempt to deliver an event: to which URL, by whom, and what the receiver answered."""

    class Trigger(models.TextChoices):
        REQUEST = "request", "Right after the outcome"
        WORKER = "worker", "deliver_events"
        OPERATOR = "operator", "Re-sent by an operator"

    event = models.ForeignKey(SchemaEvent, on_delete=models.CASCADE, related_name="deliveries")
    attempted_at = models.DateTimeField(default=timezone.now, db_index=True)
    url = models.CharField(max_length=2000)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    duration_ms = models.PositiveIntegerField(default=0)
    delivered = models.BooleanField(default=False)

    class Meta:
        ordering = ("-attempted_at",)
        verbose_name = "event delivery attempt"

    def __str__(self) -> str:
        answer = self.status_code or self.error or "no answer"
        return f"{self.attempted_at:%Y-%m-%d %H:%M:%S} {answer}"


class EventReceiver(models.Model):
    """What is known of a receiver URL: whether it answered 410 Gone, and since when it fails.

    A receiver that answered 410 Gone gets nothing more until an operator resumes delivery to
    it (its events wait, pending). One that is failing gets no attempt during requests until
    `quiet_until` (`WF11_RETRY_BASE_S` after its last failure): meanwhile the events wait for
    `deliver_events`, so an outage does not slow the webhook down.
    """

    url = models.CharField(max_length=2000, unique=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    stopped_reason = models.TextField(blank=True, default="")
    failing_since = models.DateTimeField(null=True, blank=True)
    quiet_until = models.DateTimeField(
        null=True, blank=True, help_text="Requests make no attempt before this time."
    )
    last_delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "event receiver"

    def __str__(self) -> str:
        return self.url


class MigrationLedgerEntry(models.Model):
    """A row of the builder's migration ledger (`schema_migrations`) in the target database.

    Read-only here: the builder writes it. Keep the fields in sync with `builder/db/ledger.py`.
    """

    Status = models.TextChoices(
        "Status", [(status.name, (status.value, status.value.title())) for status in LedgerStatus]
    )

    # The nullable text columns mirror the builder's table, where NULL means "not given".
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.TextField()
    description = models.TextField(blank=True, default="")
    applied_by = models.TextField(null=True, blank=True)  # noqa: DJ001
    checksum = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices)
    sql_script = models.TextField()
    schema_hash = models.TextField()
    idempotency_key = models.TextField()
    tenant_id = models.TextField(null=True, blank=True)  # noqa: DJ001
    workflow_run_id = models.TextField(null=True, blank=True)  # noqa: DJ001
    metadata = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(null=True, blank=True)  # noqa: DJ001
    applied_at = models.DateTimeField()
    execution_ms = models.IntegerField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "schema_migrations"
        ordering = ("-applied_at",)
        verbose_name = "migration ledger entry"
        verbose_name_plural = "migration ledger"

    def __str__(self) -> str:
        return f"{self.version} {self.status} ({self.applied_at:%Y-%m-%d %H:%M})"

    @classmethod
    def table_exists(cls) -> bool:
        """Tell whether the ledger table is visible in the target database.

        The builder creates it with the first migration it records, so a fresh target has none.
        Raises DatabaseError when the target cannot be reached.
        """
        connection = connections[router.db_for_read(cls) or "default"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [cls._meta.db_table])
            row = cursor.fetchone()
        return bool(row and row[0])


class SchemaDraft(models.Model):
    """A schema request being written by an operator in the admin, before it is submitted.

    Its tables, columns and indexes are rows of their own so that the admin can edit them as
    nested forms; `revos_schema.drafts` turns a draft into the request envelope and back. Values
    are kept as the operator wrote them (names are not converted to snake_case, types not made
    canonical): the builder does that, and reports its problems against these fields.
    """

    # The values of `builder.request.envelope.VALIDATION_PROFILES` (a test keeps them equal).
    class Profile(models.TextChoices):
        SAFE = "safe", "safe (the webhook applies changes without risk at once)"
        REVIEW = "review", "review (the webhook holds it for an approver)"
        PERMISSIVE = (
            "permissive",
            "permissive (the webhook applies changes that need review at once too)",
        )

    version = models.CharField(
        max_length=255,
        help_text="payload.schema_version: 1-64 characters of A-Z a-z 0-9 . _ - (e.g. 042).",
    )
    description = models.TextField(help_text="payload.description: what this version is for.")
    validation_profile = models.CharField(
        max_length=16,
        choices=Profile.choices,
        blank=True,
        default="",
        help_text=(
            "context.validation_profile, for the exported file. Submitting from the admin always "
            "holds the request for an approver."
        ),
    )
    envelope_extra = models.JSONField(
        "other envelope fields",
        default=dict,
        blank=True,
        help_text=(
            'The envelope\'s "meta", "subject" and "context" objects (without '
            "validation_profile), kept as imported and sent as they are. Example: "
            '{"meta": {"tenant_id": "t_001"}}.'
        ),
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The submission that "Submit for approval" made last (a draft may be submitted again).
    last_submission = models.ForeignKey(
        SchemaSubmission,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )

    class Meta:
        ordering = ("-updated_at",)
        verbose_name = "schema draft"

    def __str__(self) -> str:
        return f"draft v{self.version}"


class DraftTable(models.Model):
    """A table of a draft; `position` is its place in `payload.tables`."""

    draft = models.ForeignKey(SchemaDraft, on_delete=models.CASCADE, related_name="tables")
    name = models.CharField(max_length=255, help_text="Converted to snake_case by the builder.")
    tenant_scoped = models.BooleanField(
        default=True,
        help_text="Unticked: a global table, shared by all tenants (no tenant_id, no policy).",
    )
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ("position", "id")
        verbose_name = "table"

    def __str__(self) -> str:
        return self.name


class DraftColumn(models.Model):
    """A column of a draft table; NULL in an optional field means the key is not sent."""

    class OnDelete(models.TextChoices):
        NO_ACTION = "no action", "no action"
        RESTRICT = "restrict", "restrict"
        CASCADE = "cascade", "cascade"
        SET_NULL = "set null", "set null"
        SET_DEFAULT = "set default", "set default"

    table = models.ForeignKey(DraftTable, on_delete=models.CASCADE, related_name="columns")
    name = models.CharField(max_length=255)
    type = models.CharField(max_length=255, help_text="e.g. TEXT, UUID, NUMERIC(12,2), TEXT[]")
    not_null = models.BooleanField(default=False)
    unique = models.BooleanField(default=False)
    # NULL is "no default"; "" is an (empty) default as written, which the builder refuses.
    default = models.TextField(  # noqa: DJ001
        null=True,
        blank=True,
        help_text="SQL text: 'booked' (quoted), 0, true, now(), gen_random_uuid() ...",
    )
    references_table = models.CharField(  # noqa: DJ001
        "references table",
        max_length=255,
        null=True,
        blank=True,
        help_text="A table of this draft, or one that exists in the target database.",
    )
    references_column = models.CharField(  # noqa: DJ001
        "column", max_length=255, null=True, blank=True, help_text="Empty: id."
    )
    on_delete = models.CharField(  # noqa: DJ001
        max_length=16, choices=OnDelete.choices, null=True, blank=True
    )
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ("position", "id")
        verbose_name = "column"

    def __str__(self) -> str:
        return self.name


class DraftIndex(models.Model):
    """An index of a draft table; without a name the builder generates one."""

    table = models.ForeignKey(DraftTable, on_delete=models.CASCADE, related_name="indexes")
    name = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    columns = models.JSONField(default=list, help_text="Column names, separated by commas.")
    unique = models.BooleanField(default=False)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ("position", "id")
        verbose_name = "index"
        verbose_name_plural = "indexes"

    def __str__(self) -> str:
        return self.name or f"index on {', '.join(map(str, self.columns))}"
