"""The operators' admin: drafts written as nested forms, previews, and decisions on held requests.

A thin layer over the services:

- **Drafts** (`SchemaDraft` with its tables, columns and indexes) are edited as nested forms
  (django-nested-admin), imported from and exported as envelope JSON, previewed and submitted
  for approval through `revos_schema.drafts`. The builder's validation errors of a saved draft
  are shown next to the fields they concern.
- **Submissions** are records: nobody adds, changes or deletes them here. A held one shows its
  plan (`revos_schema.preview`) and, to a user that `approvals.refusal` lets decide, the buttons
  Approve and Reject, which post to `approvals.approve` and `approvals.reject`.
- **Events** are records too. Their list shows the backlog of delivery to WF11 and the state of
  the receiver; an event's page shows every attempt. A user with `resend_schemaevent` re-sends
  events (`delivery.resend`) and resumes delivery to a receiver that answered 410 Gone
  (`delivery.resume`).
- Plans and the target's migration ledger are read-only lists.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import nested_admin
import psycopg
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.forms import BaseForm
from django.forms.utils import ErrorDict
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from builder.errors import UnsafeSQLError
from builder.pipeline import Prepared
from builder.status import Status
from revos_schema import approvals, delivery, drafts, services, targetcheck
from revos_schema.forms import DraftColumnForm, DraftIndexForm, ImportForm, SchemaDraftForm
from revos_schema.models import (
    DraftColumn,
    DraftIndex,
    DraftTable,
    EventDelivery,
    EventReceiver,
    MigrationLedgerEntry,
    SchemaDraft,
    SchemaEvent,
    SchemaPlan,
    SchemaSubmission,
)
from revos_schema.preview import Preview, highlight_sql

SUBMIT_PERMISSION = "revos_schema.submit_schema"
ASSETS = {"css": {"all": ("revos_schema/admin.css",)}}


class ReadOnlyAdmin(admin.ModelAdmin):
    """An admin that shows records to users with the view permission and changes nothing."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- submissions ------------------------------------------------------------------------------


def waiting_for(user: Any, queryset: QuerySet[SchemaSubmission]) -> QuerySet[SchemaSubmission]:
    """The held submissions that `user` may decide on as far as four eyes go (not their own,
    unless `WF106_ALLOW_SELF_APPROVAL`); the permission is checked where the filter is shown."""
    pending = queryset.filter(status=SchemaSubmission.Status.PENDING_APPROVAL)
    if settings.WF106_ALLOW_SELF_APPROVAL:
        return pending
    own = Q(submitted_by=user) | Q(submitted_by__isnull=True, actor=user.get_username())
    return pending.exclude(own)


class WaitingForMeFilter(admin.SimpleListFilter):
    """ "Waiting for me": held submissions the approver looking at the list may decide on."""

    title = "waiting for"
    parameter_name = "waiting"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        if not request.user.has_perm(approvals.APPROVE_PERMISSION):
            return []
        return [("me", "me (held, not submitted by me)")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[SchemaSubmission]
    ) -> QuerySet[SchemaSubmission]:
        if self.value() == "me":
            return waiting_for(request.user, queryset)
        return queryset


@admin.register(SchemaSubmission)
class SchemaSubmissionAdmin(ReadOnlyAdmin):
    change_form_template = "admin/revos_schema/schemasubmission/change_form.html"
    list_display = (
        "created_at",
        "schema_version",
        "tenant_id",
        "status",
        "http_status",
        "source",
        "submitted_by",
        "actor",
        "decision",
        "short_hash",
    )
    list_filter = (
        WaitingForMeFilter,
        "status",
        ("schema_version", admin.AllValuesFieldListFilter),
        ("submitted_by", admin.RelatedOnlyFieldListFilter),
        ("created_at", admin.DateFieldListFilter),
        "source",
        "decision",
    )
    list_select_related = ("submitted_by",)
    search_fields = (
        "schema_version",
        "schema_hash",
        "idempotency_key",
        "tenant_id",
        "actor",
        "submitted_by__username",
        "decision_reason",
    )
    date_hierarchy = "created_at"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    ("status", "http_status"),
                    ("source", "actor", "submitted_by"),
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
        (
            "Decision",
            {"fields": (("decision", "decided_by", "decided_at"), "decision_reason")},
        ),
        # The raw record, folded: the preview above shows the plan in a readable form.
        ("Request", {"classes": ("collapse",), "fields": ("envelope",)}),
        (
            "Result",
            {
                "classes": ("collapse",),
                "fields": (
                    "validation_errors",
                    "plan",
                    "normalized_schema",
                    "generated_sql",
                    "response",
                ),
            },
        ),
    )

    class Media:
        css = ASSETS["css"]

    @admin.display(description="schema hash", ordering="schema_hash")
    def short_hash(self, obj: SchemaSubmission) -> str:
        return obj.schema_hash[:12]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Approvers see what they decide on, as the API lets them read every submission.
        return super().has_view_permission(request, obj) or request.user.has_perm(
            approvals.APPROVE_PERMISSION
        )

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path(
                "<uuid:object_id>/approve/",
                wrap(self.approve_view),
                name="{}_{}_approve".format(*info),
            ),
            path(
                "<uuid:object_id>/reject/",
                wrap(self.reject_view),
                name="{}_{}_reject".format(*info),
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        submission = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if submission is not None and self.has_view_permission(request, submission):
            context.update(self.decision_context(request, submission))
        return super().change_view(request, object_id, form_url, context)

    def decision_context(
        self, request: HttpRequest, submission: SchemaSubmission
    ) -> dict[str, Any]:
        """What the change page shows above the record: the outcome, the decision or the
        buttons to make it, and the plan's preview."""
        pending = submission.status == SchemaSubmission.Status.PENDING_APPROVAL
        refused = approvals.refusal(request.user, submission) if pending else None
        info = self.opts.app_label, self.opts.model_name
        outputs = (submission.response or {}).get("result", {}).get("primary_outputs", {})
        return {
            "verification": outputs.get("verification"),
            "steps": outputs.get("steps", []),
            "submission": submission,
            "pending": pending,
            "can_decide": pending and refused is None,
            "refusal": refused,
            "decision": approvals.decision_of(submission),
            "summary": (submission.response or {}).get("result", {}).get("summary", ""),
            "approve_url": reverse("admin:{}_{}_approve".format(*info), args=[submission.pk]),
            "reject_url": reverse("admin:{}_{}_reject".format(*info), args=[submission.pk]),
            "preview": targetcheck.submission_preview(submission),
        }

    @staticmethod
    def _change_url(object_id: Any) -> str:
        return reverse("admin:revos_schema_schemasubmission_change", args=[object_id])

    @staticmethod
    def _posted_reason(request: HttpRequest) -> str:
        return str(request.POST.get("reason", ""))

    def approve_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        return self._decide(request, object_id, approve=True)

    def reject_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        return self._decide(request, object_id, approve=False)

    def _decide(self, request: HttpRequest, object_id: Any, *, approve: bool) -> HttpResponse:
        """Post a decision to `approvals`; its refusals become error messages on the page."""
        response = _require_post(request)
        if response is not None:
            return response
        reason = self._posted_reason(request)
        try:
            if approve:
                outcome, _ = approvals.approve(object_id, user=request.user, reason=reason)
                summary = outcome.response["result"]["summary"]
                if outcome.status in (Status.APPLIED, Status.NOOP):
                    messages.success(request, f"Approved. {summary}")
                else:
                    detail = f" {outcome.error}" if outcome.error else ""
                    messages.error(request, f"Approved, but: {summary}{detail}")
            else:
                approvals.reject(object_id, user=request.user, reason=reason)
                messages.success(request, "Rejected; nothing was executed.")
        except SchemaSubmission.DoesNotExist:
            raise Http404("No such submission.") from None
        except approvals.DecisionRefused as refused:
            messages.error(request, refused.message)
        except psycopg.OperationalError:
            still_held = SchemaSubmission.objects.filter(
                pk=object_id, status=SchemaSubmission.Status.PENDING_APPROVAL
            ).exists()
            messages.error(
                request,
                "The target database cannot be reached: nothing was applied. "
                + (
                    "Nothing was decided either; the submission still waits for an approver."
                    if still_held
                    else "The submission is recorded as failed."
                ),
            )
        except services.OutcomeNotStored as exc:
            messages.error(
                request,
                f"The request was {exc.outcome.status}, but that could not be stored. The target "
                "database's migration ledger has the record.",
            )
        return redirect(self._change_url(object_id))


def _require_post(request: HttpRequest) -> HttpResponse | None:
    """A 405 for anything but a POST (the forms that change things post, with their CSRF token)."""
    return None if request.method == "POST" else HttpResponseNotAllowed(["POST"])


@admin.register(SchemaPlan)
class SchemaPlanAdmin(ReadOnlyAdmin):
    """The plans (normalized schema and SQL) that submissions share."""

    list_display = ("digest", "created_at", "submission_count")
    search_fields = ("digest",)
    date_hierarchy = "created_at"
    fields = ("digest", "created_at", "highlighted_sql", "normalized_schema", "generated_sql")
    readonly_fields = ("highlighted_sql",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SchemaPlan]:
        return super().get_queryset(request).annotate(Count("submissions"))

    @admin.display(description="submissions", ordering="submissions__count")
    def submission_count(self, obj: Any) -> int:
        return int(obj.submissions__count)

    @admin.display(description="SQL")
    def highlighted_sql(self, obj: SchemaPlan) -> str:
        return highlight_sql(obj.generated_sql)


# --- events -----------------------------------------------------------------------------------

RESEND_PERMISSION = "revos_schema.resend_schemaevent"
NO_URL = "no WF11_WEBHOOK_URL configured: events are kept, not delivered"
# The most events an operator re-sends in one request (each attempt may wait for the receiver).
MAX_RESEND = 50


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S}"


def _last_attempt(field: str) -> Subquery:
    """The `field` of an event's newest attempt, as an annotation of the events' query."""
    newest = EventDelivery.objects.filter(event=OuterRef("pk")).order_by("-attempted_at", "-pk")
    return Subquery(newest.values(field)[:1])


class ResendPermission:
    """`has_resend_permission` for the actions that send to the receiver; a POST of one of
    `resend_actions` without it is refused (403) rather than ignored."""

    resend_actions: tuple[str, ...] = ()

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(RESEND_PERMISSION))

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        action = request.POST.get("action") if request.method == "POST" else None
        if action in self.resend_actions and not self.has_resend_permission(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


class EventDeliveryInline(admin.TabularInline):
    """Every attempt to deliver the event, newest first."""

    model = EventDelivery
    fields = ("attempted", "trigger", "url", "status_code", "error", "duration", "delivered")
    readonly_fields = fields
    ordering = ("-attempted_at", "-pk")
    extra = 0
    can_delete = False
    verbose_name_plural = "delivery attempts, newest first"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="attempted at")
    def attempted(self, obj: EventDelivery) -> str:
        return _when(obj.attempted_at)

    @admin.display(description="duration")
    def duration(self, obj: EventDelivery) -> str:
        return f"{obj.duration_ms} ms"


@admin.action(description="Re-send now", permissions=["resend"])
def resend_now(
    model_admin: SchemaEventAdmin, request: HttpRequest, queryset: QuerySet[SchemaEvent]
) -> None:
    model_admin.resend(request, list(queryset.order_by("created_at")))


@admin.register(SchemaEvent)
class SchemaEventAdmin(ResendPermission, ReadOnlyAdmin):
    """The events and their delivery to WF11: the backlog above the list, every attempt of an
    event on its page, and re-sending them (`delivery.resend`)."""

    change_list_template = "admin/revos_schema/schemaevent/change_list.html"
    change_form_template = "admin/revos_schema/schemaevent/change_form.html"
    list_display = (
        "created",
        "event_type",
        "submission",
        "delivery_state",
        "attempts",
        "last_attempt",
        "next_attempt",
    )
    list_filter = ("delivery_status", "event_type")
    search_fields = ("event_type", "submission__schema_version", "submission__schema_hash")
    list_select_related = ("submission",)
    date_hierarchy = "created_at"
    actions = (resend_now,)
    resend_actions = ("resend_now",)
    inlines = (EventDeliveryInline,)
    readonly_fields = (
        "hook_id",
        "created",
        "delivery_state",
        "next_attempt",
        "delivered",
        "pretty_payload",
    )
    fieldsets = (
        (None, {"fields": ("hook_id", ("created", "event_type"), "submission")}),
        (
            "Delivery",
            {
                "fields": (
                    "delivery_state",
                    ("attempts", "next_attempt"),
                    "delivered",
                    "last_error",
                )
            },
        ),
        ("Payload", {"fields": ("pretty_payload",)}),
    )

    class Media:
        css = ASSETS["css"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[SchemaEvent]:
        # The newest attempt and the receiver's stop, in the list's own query.
        stopped = EventReceiver.objects.filter(url=settings.WF11_WEBHOOK_URL)
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_attempted_at=_last_attempt("attempted_at"),
                last_status_code=_last_attempt("status_code"),
                last_attempt_error=_last_attempt("error"),
                receiver_stopped_at=Subquery(stopped.values("stopped_at")[:1]),
            )
        )

    @admin.display(description="created at", ordering="created_at")
    def created(self, obj: SchemaEvent) -> str:
        return _when(obj.created_at)

    @admin.display(description="webhook-id")
    def hook_id(self, obj: SchemaEvent) -> str:
        return obj.webhook_id

    @admin.display(description="delivered at")
    def delivered(self, obj: SchemaEvent) -> str:
        return _when(obj.delivered_at)

    @admin.display(description="delivery", ordering="delivery_status")
    def delivery_state(self, obj: SchemaEvent) -> str:
        status = obj.delivery_status
        note = ""
        if status == SchemaEvent.Delivery.DELIVERED:
            kind, label = "delivered", "Delivered"
        elif status == SchemaEvent.Delivery.DEAD:
            kind, label = "dead", "Dead"
            note = f"after {obj.attempts} attempts"
        elif not settings.WF11_WEBHOOK_URL:
            kind, label, note = "unsent", "Not delivered", "no WF11_WEBHOOK_URL"
        elif getattr(obj, "receiver_stopped_at", None) is not None:
            kind, label, note = "stopped", "Pending", "delivery stopped after 410 Gone"
        else:
            kind, label = "pending", "Pending"
        return format_html(
            '<span class="wf106-delivery wf106-delivery-{}">{}</span>{}',
            kind,
            label,
            format_html('<span class="wf106-delivery-note">{}</span>', note) if note else "",
        )

    @admin.display(description="last attempt", ordering="last_attempted_at")
    def last_attempt(self, obj: SchemaEvent) -> str:
        attempted_at = getattr(obj, "last_attempted_at", None)
        if attempted_at is None:
            return "-"
        code = getattr(obj, "last_status_code", None)
        error = getattr(obj, "last_attempt_error", "")
        answer = str(code) if code is not None else error
        kind = "ok" if code is not None and 200 <= code < 300 else "failed"
        return format_html(
            '<span class="wf106-answer wf106-answer-{}" title="{}">{}</span>'
            '<span class="wf106-delivery-note">{}</span>',
            kind,
            error,
            answer if len(answer) <= 60 else answer[:59] + "\u2026",
            _when(attempted_at),
        )

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj: SchemaEvent) -> str:
        if obj.delivery_status != SchemaEvent.Delivery.PENDING or not settings.WF11_WEBHOOK_URL:
            return "-"
        if getattr(obj, "receiver_stopped_at", None) is not None:
            return "once delivery is resumed"
        if obj.next_attempt_at <= timezone.now():
            return "due now"
        return _when(obj.next_attempt_at)

    @admin.display(description="payload")
    def pretty_payload(self, obj: SchemaEvent) -> str:
        text = json.dumps(obj.payload, indent=2, sort_keys=True, ensure_ascii=False)
        return format_html('<pre class="wf106-json" id="wf106-payload">{}</pre>', text)

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/resend/",
                self.admin_site.admin_view(self.resend_view),
                name="{}_{}_resend".format(*info),
            ),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        url = settings.WF11_WEBHOOK_URL
        found = EventReceiver.objects.filter(url=url).first() if url else None
        backlog = delivery.backlog()
        context = {
            **(extra_context or {}),
            "backlog": backlog,
            "webhook_url": url,
            "receiver": found,
            "delivery_trouble": (
                not url
                or backlog.dead > 0
                or (found is not None and (found.stopped_at or found.failing_since) is not None)
            ),
            "receivers_url": (
                reverse("admin:revos_schema_eventreceiver_changelist")
                if request.user.has_perm("revos_schema.view_eventreceiver")
                else ""
            ),
        }
        return super().changelist_view(request, context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        info = self.opts.app_label, self.opts.model_name
        context = {
            **(extra_context or {}),
            "may_resend": self.has_resend_permission(request),
            "webhook_url": settings.WF11_WEBHOOK_URL,
            "resend_url": reverse("admin:{}_{}_resend".format(*info), args=[object_id]),
        }
        return super().change_view(request, object_id, form_url, context)

    def resend_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        response = _require_post(request)
        if response is not None:
            return response
        if not self.has_resend_permission(request):
            raise PermissionDenied
        event = self.get_object(request, unquote(object_id))
        if event is None:
            raise Http404("No such event.")
        self.resend(request, [event])
        return redirect(reverse("admin:revos_schema_schemaevent_change", args=[event.pk]))

    def resend(self, request: HttpRequest, events: list[SchemaEvent]) -> None:
        """Attempt the events once each (`delivery.resend`), oldest first, and say how it went.

        The attempts are made within the operator's request: at most `MAX_RESEND` at once, and
        none after the first that fails (the receiver is in trouble: the rest would only wait).
        """
        url = settings.WF11_WEBHOOK_URL
        if not url:
            messages.error(request, f"Nothing was sent: {NO_URL}.")
            return
        if len(events) > MAX_RESEND:
            messages.error(
                request,
                f"Nothing was sent: select at most {MAX_RESEND} events to re-send at once "
                "(manage.py deliver_events sends any number of pending ones).",
            )
            return
        delivered = busy = 0
        failure = ""
        for event in events:
            made = delivery.resend(event.pk)
            if made is None:
                busy += 1
            elif made.delivered:
                delivered += 1
            else:
                failure = f"{event.webhook_id}: {made.error}"
                break
        left = len(events) - delivered - busy - (1 if failure else 0)
        text = f"Re-sent to {url}: {delivered} of {len(events)} delivered"
        if failure:
            text += f"; failed: {failure}"
        if left:
            text += f"; {left} not attempted after that failure"
        if busy:
            text += f"; {busy} not attempted: another process is delivering it at this moment"
        level = messages.ERROR if failure else messages.WARNING if busy else messages.SUCCESS
        self.message_user(request, text + ".", level=level)


@admin.action(description="Resume delivery", permissions=["resend"])
def resume_delivery(
    model_admin: EventReceiverAdmin, request: HttpRequest, queryset: QuerySet[EventReceiver]
) -> None:
    for found in queryset:
        if delivery.resume(found.url):
            model_admin.message_user(
                request,
                f"Delivery to {found.url} is resumed: its pending events are sent again.",
                level=messages.SUCCESS,
            )
        else:
            model_admin.message_user(
                request, f"Delivery to {found.url} was not stopped.", level=messages.WARNING
            )


@admin.register(EventReceiver)
class EventReceiverAdmin(ResendPermission, ReadOnlyAdmin):
    """The receivers events were sent to; one that answered 410 Gone gets nothing more until an
    operator resumes delivery to it."""

    list_display = (
        "url",
        "state",
        "failing_since",
        "stopped_at",
        "stopped_reason",
        "last_delivered_at",
    )
    actions = (resume_delivery,)
    resend_actions = ("resume_delivery",)

    class Media:
        css = ASSETS["css"]

    @admin.display(description="state")
    def state(self, obj: EventReceiver) -> str:
        if obj.stopped_at is not None:
            kind, label = "stopped", "Stopped after 410 Gone"
        elif obj.failing_since is not None:
            kind, label = "dead", "Failing"
        elif obj.last_delivered_at is not None:
            kind, label = "delivered", "Taking events"
        else:
            kind, label = "pending", "Nothing delivered yet"
        note = "" if obj.url == settings.WF11_WEBHOOK_URL else "not the WF11_WEBHOOK_URL now"
        return format_html(
            '<span class="wf106-delivery wf106-delivery-{}">{}</span>{}',
            kind,
            label,
            format_html('<span class="wf106-delivery-note">{}</span>', note) if note else "",
        )


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
    readonly_fields = ("highlighted_sql",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    ("version", "status"),
                    "description",
                    ("applied_at", "execution_ms"),
                    ("applied_by", "tenant_id", "workflow_run_id"),
                    "schema_hash",
                    "checksum",
                    "idempotency_key",
                    "error_message",
                    "metadata",
                    "highlighted_sql",
                )
            },
        ),
        ("SQL as plain text", {"classes": ("collapse",), "fields": ("sql_script",)}),
    )

    @admin.display(description="schema hash", ordering="schema_hash")
    def short_hash(self, obj: MigrationLedgerEntry) -> str:
        return obj.schema_hash[:12]

    @admin.display(description="SQL script")
    def highlighted_sql(self, obj: MigrationLedgerEntry) -> str:
        return highlight_sql(obj.sql_script)

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


# --- drafts -----------------------------------------------------------------------------------


class DraftColumnInline(nested_admin.SortableHiddenMixin, nested_admin.NestedTabularInline):
    model = DraftColumn
    form = DraftColumnForm
    sortable_field_name = "position"
    extra = 0


class DraftIndexInline(nested_admin.SortableHiddenMixin, nested_admin.NestedTabularInline):
    model = DraftIndex
    form = DraftIndexForm
    sortable_field_name = "position"
    extra = 0


class DraftTableInline(nested_admin.SortableHiddenMixin, nested_admin.NestedStackedInline):
    model = DraftTable
    fields = (("name", "tenant_scoped"), "position")
    sortable_field_name = "position"
    inlines = (DraftColumnInline, DraftIndexInline)
    extra = 0


@admin.action(description="Submit for approval")
def submit_for_approval(
    model_admin: SchemaDraftAdmin, request: HttpRequest, queryset: QuerySet[SchemaDraft]
) -> None:
    for draft in queryset:
        model_admin.submit_draft(request, draft)


@admin.register(SchemaDraft)
class SchemaDraftAdmin(nested_admin.NestedModelAdmin):
    form = SchemaDraftForm
    inlines = (DraftTableInline,)
    change_form_template = "admin/revos_schema/schemadraft/change_form.html"
    change_list_template = "admin/revos_schema/schemadraft/change_list.html"
    list_display = (
        "version",
        "short_description",
        "table_count",
        "created_by",
        "updated_at",
        "submission_link",
    )
    list_select_related = ("created_by", "last_submission")
    search_fields = ("version", "description", "tables__name")
    list_filter = (("created_by", admin.RelatedOnlyFieldListFilter), "updated_at")
    readonly_fields = ("created_by", "created_at", "updated_at", "submission_link")
    fieldsets = (
        (None, {"fields": ("version", "description", "validation_profile")}),
        ("Envelope", {"classes": ("collapse",), "fields": ("envelope_extra",)}),
        (
            "Record",
            {"fields": (("created_by", "created_at", "updated_at"), "submission_link")},
        ),
    )
    actions = (submit_for_approval,)

    class Media:
        css = ASSETS["css"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[SchemaDraft]:
        return super().get_queryset(request).annotate(Count("tables", distinct=True))

    def get_fieldsets(self, request: HttpRequest, obj: SchemaDraft | None = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        # A new draft has no record yet (creator, times, submission) to show.
        return fieldsets if obj is not None else fieldsets[:-1]

    @admin.display(description="description")
    def short_description(self, obj: SchemaDraft) -> str:
        return obj.description if len(obj.description) <= 60 else obj.description[:59] + "\u2026"

    @admin.display(description="tables", ordering="tables__count")
    def table_count(self, obj: Any) -> int:
        return int(getattr(obj, "tables__count", obj.tables.count()))

    @admin.display(description="last submission")
    def submission_link(self, obj: SchemaDraft) -> str:
        submission = obj.last_submission
        if submission is None:
            return "-"
        url = reverse("admin:revos_schema_schemasubmission_change", args=[submission.pk])
        return format_html('<a href="{}">{}</a>', url, submission.get_status_display())

    def save_model(self, request: HttpRequest, obj: SchemaDraft, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    # -- URLs: import, export, preview, submit

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("import/", wrap(self.import_view), name="{}_{}_import".format(*info)),
            path(
                "<path:object_id>/preview/",
                wrap(self.preview_view),
                name="{}_{}_preview".format(*info),
            ),
            path(
                "<path:object_id>/export/",
                wrap(self.export_view),
                name="{}_{}_export".format(*info),
            ),
            path(
                "<path:object_id>/submit/",
                wrap(self.submit_view),
                name="{}_{}_submit".format(*info),
            ),
            *super().get_urls(),
        ]

    def _url(self, name: str, draft: SchemaDraft) -> str:
        return reverse(f"admin:revos_schema_schemadraft_{name}", args=[draft.pk])

    def _draft(self, request: HttpRequest, object_id: str) -> SchemaDraft:
        draft = self.get_object(request, unquote(object_id))
        if draft is None:
            raise Http404("No such draft.")
        if not self.has_view_permission(request, draft):
            raise PermissionDenied
        return draft

    def may_submit(self, request: HttpRequest, draft: SchemaDraft | None = None) -> bool:
        """Submitting is an author's act: it needs the webhook's permission and the draft's."""
        return request.user.has_perm(SUBMIT_PERMISSION) and self.has_change_permission(
            request, draft
        )

    def response_add(
        self, request: HttpRequest, obj: SchemaDraft, post_url_continue: str | None = None
    ) -> HttpResponse:
        if "_preview" in request.POST:
            return HttpResponseRedirect(self._url("preview", obj))
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: SchemaDraft) -> HttpResponse:
        if "_preview" in request.POST:
            return HttpResponseRedirect(self._url("preview", obj))
        return super().response_change(request, obj)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        draft = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if draft is not None:
            context.update(
                preview_url=self._url("preview", draft),
                export_url=self._url("export", draft),
                submit_url=self._url("submit", draft),
                may_submit=self.may_submit(request, draft),
            )
        return super().change_view(request, object_id, form_url, context)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {**(extra_context or {}), "may_import": self.has_add_permission(request)}
        return super().changelist_view(request, context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: SchemaDraft | None = None,
    ) -> HttpResponse:
        # A saved draft opened afresh shows what the builder finds wrong with it, next to each
        # field; after a POST with errors of the forms themselves, those are shown instead.
        if obj is not None and not context["adminform"].form.is_bound:
            self._show_issues(request, context, obj)
        # By keyword: nested_admin's override takes `obj` third.
        return super().render_change_form(
            request, context, add=add, change=change, form_url=form_url, obj=obj
        )

    def _show_issues(
        self, request: HttpRequest, context: dict[str, Any], draft: SchemaDraft
    ) -> None:
        try:
            planned = drafts.plan(draft)
        except UnsafeSQLError as exc:
            messages.error(request, f"The builder could not render this draft's SQL: {exc}")
            return
        if isinstance(planned, Prepared):
            return
        placed = drafts.placed_issues(draft, planned.issues)
        unplaced = attach_issues(context, placed)
        count = len(placed)
        text = (
            f"The builder finds {count} problem{'s' if count != 1 else ''} in this draft, shown "
            "next to the fields they concern; it cannot be submitted until they are fixed."
        )
        if unplaced:
            text += " " + " ".join(f"{p.label}: {p.message}" for p in unplaced)
        messages.warning(request, text)

    # -- the views

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        draft = self._draft(request, object_id)
        preview: Preview | None = None
        issues: list[drafts.PlacedIssue] = []
        try:
            planned = drafts.plan(draft)
        except UnsafeSQLError as exc:
            messages.error(request, f"The builder could not render this draft's SQL: {exc}")
        else:
            if isinstance(planned, Prepared):
                preview = targetcheck.draft_preview(planned)
            else:
                issues = drafts.placed_issues(draft, planned.issues)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Preview of {draft}",
            "subtitle": draft.description,
            "original": draft,
            "draft": draft,
            "preview": preview,
            "issues": issues,
            "change_url": reverse("admin:revos_schema_schemadraft_change", args=[draft.pk]),
            "submit_url": self._url("submit", draft),
            "may_submit": self.may_submit(request, draft) and preview is not None,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/revos_schema/schemadraft/preview.html", context)

    def export_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        draft = self._draft(request, object_id)
        response = HttpResponse(drafts.export_json(draft), content_type="application/json")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", draft.version) or "draft"
        response["Content-Disposition"] = f'attachment; filename="schema_{name}.json"'
        return response

    def submit_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        response = _require_post(request)
        if response is not None:
            return response
        draft = self._draft(request, object_id)
        if not self.may_submit(request, draft):
            raise PermissionDenied
        submission = self.submit_draft(request, draft)
        if submission is None:
            return redirect(reverse("admin:revos_schema_schemadraft_change", args=[draft.pk]))
        if request.user.has_perm("revos_schema.view_schemasubmission"):
            return redirect(SchemaSubmissionAdmin._change_url(submission.pk))
        return redirect(reverse("admin:revos_schema_schemadraft_change", args=[draft.pk]))

    def submit_draft(self, request: HttpRequest, draft: SchemaDraft) -> SchemaSubmission | None:
        """Submit one draft for approval and say how it went; None if it was not submitted."""
        if not self.may_submit(request, draft):
            messages.error(request, f"{draft}: this account may not submit drafts.")
            return None
        try:
            outcome, submission = drafts.submit(draft, user=request.user)
        except drafts.DraftInvalid as invalid:
            count = len(invalid.issues)
            messages.error(
                request,
                f"{draft} was not submitted: the builder finds {count} "
                f"problem{'s' if count != 1 else ''} in it, shown next to the fields they concern.",
            )
            return None
        except UnsafeSQLError as exc:
            messages.error(request, f"{draft} was not submitted: its SQL failed the check: {exc}")
            return None
        except psycopg.OperationalError:
            messages.error(
                request,
                f"{draft} was not submitted: the target database cannot be reached. Try again "
                "later.",
            )
            return None
        except services.OutcomeNotStored:
            messages.error(request, f"{draft} was not submitted: it could not be stored.")
            return None
        summary = outcome.response["result"]["summary"]
        messages.success(request, f"{draft} was submitted for approval. {summary}")
        return submission

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        problems: list[str] = []
        if request.method == "POST":
            form = ImportForm(request.POST, request.FILES)
            if form.is_valid():
                upload = form.cleaned_data["file"]
                limit = settings.WF106_MAX_BODY_BYTES
                if upload.size > limit:
                    problems = [f"The file is larger than {limit} bytes."]
                else:
                    try:
                        draft = drafts.import_json(upload.read(), user=request.user)
                    except drafts.ImportRefused as refused:
                        problems = refused.problems
                    else:
                        messages.success(request, f"Imported {draft}.")
                        return redirect(
                            reverse("admin:revos_schema_schemadraft_change", args=[draft.pk])
                        )
        else:
            form = ImportForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Import a schema draft",
            "form": form,
            "problems": problems,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/revos_schema/schemadraft/import.html", context)


def attach_issues(context: dict[str, Any], placed: list[drafts.PlacedIssue]) -> list[Any]:
    """Show each issue on the form of the part it concerns, as an error of its field (or of the
    form as a whole); return those that no form on the page stands for.

    The forms are unbound (the page shows the saved draft), so their errors are set directly.
    Tables, columns and indexes are in their formsets in `position` order, the order of the
    envelope's arrays that the issues' paths count in.
    """
    draft_form: BaseForm = context["adminform"].form
    table_forms: list[BaseForm] = []
    for inline_admin_formset in context.get("inline_admin_formsets", []):
        if inline_admin_formset.formset.model is DraftTable:
            table_forms = list(inline_admin_formset.formset.forms)
    unplaced = []
    for item in placed:
        where = item.where
        form: BaseForm | None = draft_form if where.part == "draft" else None
        if where.table is not None and where.table < len(table_forms):
            form = table_forms[where.table]
            if where.part in ("column", "index"):
                model = DraftColumn if where.part == "column" else DraftIndex
                nested = [
                    formset
                    for formset in getattr(form, "nested_formsets", [])
                    if formset.model is model
                ]
                forms = list(nested[0].forms) if nested else []
                form = (
                    forms[where.item]
                    if where.item is not None and where.item < len(forms)
                    else None
                )
        if form is None or (where.part == "draft" and where.field is None):
            unplaced.append(item)
            continue
        _add_error(form, where.field, item.message)
    return unplaced


def _add_error(form: BaseForm, field: str | None, message: str) -> None:
    if form._errors is None:
        form._errors = ErrorDict()
    key = field if field in form.fields else "__all__"
    errors = form._errors.get(key)
    if errors is None:
        extra = "nonfield" if key == "__all__" else None
        errors = form.error_class(error_class=extra, renderer=form.renderer)
        form._errors[key] = errors
    errors.append(message)
