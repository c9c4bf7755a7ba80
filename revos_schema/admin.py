"""The operators' admin: drafts written as nested forms, previews, and decisions on held requests.

A thin layer over the services:

- **Drafts** (`SchemaDraft` with its tables, columns and indexes) are edited as nested forms
  (django-nested-admin), imported from and exported as envelope JSON, previewed and submitted
  for approval through `revos_schema.drafts`. The builder's validation errors of a saved draft
  are shown next to the fields they concern.
- **Submissions** are records: nobody adds, changes or deletes them here. A held one shows its
  plan (`revos_schema.preview`) and, to a user that `approvals.refusal` lets decide, the buttons
  Approve and Reject, which post to `approvals.approve` and `approvals.reject`.
- Plans, events and the target's migration ledger are read-only lists.
"""

from __future__ import annotations

import re
from typing import Any

import nested_admin
import psycopg
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.db.models import Count, Q, QuerySet
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
from django.utils.html import format_html

from builder.errors import UnsafeSQLError
from builder.pipeline import Prepared
from builder.status import Status
from revos_schema import approvals, drafts, services, targetcheck
from revos_schema.forms import DraftColumnForm, DraftIndexForm, ImportForm, SchemaDraftForm
from revos_schema.models import (
    DraftColumn,
    DraftIndex,
    DraftTable,
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
