"""OpenAPI description of the WF106 webhook (drf-spectacular): request, responses, examples.

These serializers document the contract only; requests are validated by the builder, which
reports every problem at once with its path (`payload.tables[2].columns[0].type`).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers

from builder.request.envelope import VALIDATION_PROFILES

STATUSES = (
    "applied",
    "noop",
    "preview",
    "pending_approval",
    "blocked",
    "conflict",
    "failed",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "length_required",
    "unsupported_media_type",
    "received",
    "rejected",
)


class ReferenceSerializer(serializers.Serializer[Any]):
    table = serializers.CharField()
    column = serializers.CharField(required=False, help_text="Defaults to id.")
    on_delete = serializers.ChoiceField(
        choices=["no action", "restrict", "cascade", "set null", "set default"], required=False
    )


class ColumnSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(help_text="Normalized to snake_case.")
    type = serializers.CharField(
        help_text="From an allow list, e.g. TEXT, UUID, NUMERIC(12,2), VARCHAR(80), TEXT[]."
    )
    not_null = serializers.BooleanField(required=False)
    unique = serializers.BooleanField(required=False)
    default = serializers.JSONField(
        required=False,
        help_text="A literal (number, boolean, 'quoted text') or now(), gen_random_uuid(), ...",
    )
    references = ReferenceSerializer(required=False)


class IndexSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(required=False, help_text="Generated when omitted.")
    columns = serializers.ListField(child=serializers.CharField(), min_length=1)
    unique = serializers.BooleanField(required=False)


class TableSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    columns = ColumnSerializer(many=True)
    indexes = IndexSerializer(many=True, required=False)
    tenant_scoped = serializers.BooleanField(
        required=False, help_text="Default true: tenant_id column and row level security."
    )
    drop_columns = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Columns to remove from the existing table; none that the table defines.",
    )
    drop_indexes = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Indexes to remove from the existing table; none that the payload defines.",
    )


class PayloadSerializer(serializers.Serializer[Any]):
    schema_version = serializers.CharField()
    description = serializers.CharField()
    tables = TableSerializer(many=True)
    drop_tables = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Tables to remove from the target database; none that tables lists.",
    )
    allow_destructive = serializers.BooleanField(
        required=False,
        help_text="Default false: consent to changes that can lose data, such as drops.",
    )
    dry_run = serializers.BooleanField(
        required=False, help_text="Preview only: SQL and plan, nothing is executed."
    )
    force_apply = serializers.BooleanField(
        required=False,
        help_text=(
            "Re-run an already applied version's SQL (same schema_version and same schema), "
            "e.g. to repair drift; recorded in the ledger as 'reapplied'."
        ),
    )


class MetaSerializer(serializers.Serializer[Any]):
    tenant_id = serializers.CharField(required=False)
    idempotency_key = serializers.CharField(required=False)
    workflow_run_id = serializers.CharField(required=False)


class SubjectSerializer(serializers.Serializer[Any]):
    tenant_id = serializers.CharField(required=False)


class ContextSerializer(serializers.Serializer[Any]):
    actor_id = serializers.CharField(required=False)
    validation_profile = serializers.ChoiceField(
        choices=list(VALIDATION_PROFILES),
        required=False,
        help_text="Default safe; review: hold for an approver.",
    )


class RequestEnvelopeSerializer(serializers.Serializer[Any]):
    meta = MetaSerializer(required=False)
    subject = SubjectSerializer(required=False)
    payload = PayloadSerializer()
    context = ContextSerializer(required=False)


class MetaOutSerializer(serializers.Serializer[Any]):
    workflow_name = serializers.CharField()
    workflow_run_id = serializers.CharField()
    latency_ms = serializers.IntegerField()
    success = serializers.BooleanField()
    inputs_hash = serializers.CharField()
    outputs_hash = serializers.CharField()


class ValidationErrorSerializer(serializers.Serializer[Any]):
    path = serializers.CharField()
    code = serializers.CharField()
    message = serializers.CharField()


class ResultSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=STATUSES)
    summary = serializers.CharField()
    primary_outputs = serializers.DictField()
    validation_errors = ValidationErrorSerializer(many=True, required=False)
    already_applied_at = serializers.DateTimeField(required=False)
    conflict = serializers.DictField(required=False)
    error = serializers.CharField(required=False)
    submission_id = serializers.UUIDField(required=False)
    submission_url = serializers.CharField(required=False)


class AuditSerializer(serializers.Serializer[Any]):
    phi_touched = serializers.BooleanField()
    data_written = serializers.ListField(child=serializers.DictField())
    external_calls = serializers.ListField(child=serializers.DictField())


class OutputEnvelopeSerializer(serializers.Serializer[Any]):
    meta_out = MetaOutSerializer()
    result = ResultSerializer()
    audit = AuditSerializer()


def _example(
    name: str,
    result: dict[str, Any],
    *,
    status_code: str,
    external_calls: list[dict[str, Any]] | None = None,
) -> OpenApiExample:
    return OpenApiExample(
        name,
        response_only=True,
        status_codes=[status_code],
        value={
            "meta_out": {
                "workflow_name": "WF106",
                "workflow_run_id": "wr_0f3c9a",
                "latency_ms": 42,
                "success": result["status"] in ("applied", "noop", "preview"),
                "inputs_hash": "sha256_9f86d08...",
                "outputs_hash": "sha256_60303ae...",
            },
            "result": result,
            "audit": {
                "phi_touched": False,
                "data_written": [],
                "external_calls": external_calls or [],
            },
        },
    )


_OUTPUTS = {"schema_version": "001", "tables_created": 1, "indexes_created": 3, "warnings": []}
RESPONSE_EXAMPLES = [
    _example(
        "applied",
        {
            "status": "applied",
            "summary": "Applied schema v001: 1 tables (1 created).",
            "primary_outputs": {**_OUTPUTS, "migration_log_id": "5b1d...-uuid"},
        },
        status_code="200",
        # The target's ledger, then the attempt to deliver the event to WF11.
        external_calls=[
            {"service": "postgresql", "latency_ms": 36},
            {
                "service": "wf11",
                "event_type": "schema_migration_applied",
                "webhook_id": "msg_6f1c...",
                "status_code": 204,
                "delivered": True,
                "latency_ms": 3,
            },
        ],
    ),
    _example(
        "noop",
        {
            "status": "noop",
            "summary": "Schema v001 with this exact definition was already applied at ...",
            "already_applied_at": "2026-11-26T07:00:00Z",
            "primary_outputs": {**_OUTPUTS, "tables_created": 0, "indexes_created": 0},
        },
        status_code="200",
    ),
    _example(
        "preview",
        {
            "status": "preview",
            "summary": "Preview of schema v001: 1 tables, 9 statements; nothing was executed.",
            "primary_outputs": {**_OUTPUTS, "sql": "CREATE TABLE IF NOT EXISTS ...", "plan": []},
        },
        status_code="200",
    ),
    _example(
        "blocked",
        {
            "status": "blocked",
            "summary": "Validation failed: 1 error(s); nothing was executed.",
            "primary_outputs": {"schema_version": "001", "warnings": []},
            "validation_errors": [
                {
                    "path": "payload.tables[0].columns[0].type",
                    "code": "not_allowed",
                    "message": "Type 'TEXT; DROP TABLE x' is not in the allow list.",
                }
            ],
        },
        status_code="400",
    ),
    _example(
        "conflict",
        {
            "status": "conflict",
            "summary": "Schema v001 was already applied with a different definition; ...",
            "primary_outputs": {**_OUTPUTS, "tables_created": 0, "indexes_created": 0},
            "conflict": {"applied_schema_hash": "ab12...", "requested_schema_hash": "cd34..."},
        },
        status_code="409",
    ),
    _example(
        "failed",
        {
            "status": "failed",
            "summary": "Applying schema v001 failed and was rolled back.",
            "primary_outputs": {**_OUTPUTS, "tables_created": 0, "indexes_created": 0},
            "error": "23505: could not create unique index ...",
        },
        status_code="500",
    ),
]

_ENVELOPE = OutputEnvelopeSerializer
# How the body was sent, whatever it holds (docs/contract.md, section 10).
_FRAMING = {
    411: OpenApiResponse(
        _ENVELOPE,
        description="length_required: a body without Content-Length that the server "
        "cannot read (Django's development server)",
    ),
    415: OpenApiResponse(
        _ENVELOPE, description="unsupported_media_type: a body not sent as application/json"
    ),
}
SUBMIT_SCHEMA: dict[str, Any] = {
    "operation_id": "wf106_schema_builder",
    "summary": "Validate, plan and apply a schema version (WF106)",
    "request": RequestEnvelopeSerializer,
    "responses": {
        200: OpenApiResponse(_ENVELOPE, description="applied, noop or preview"),
        202: OpenApiResponse(
            _ENVELOPE,
            description="pending_approval: held for an approver (profile review, or the "
            "service requires approval); nothing was executed",
        ),
        400: OpenApiResponse(_ENVELOPE, description="blocked: validation_errors lists them all"),
        401: OpenApiResponse(_ENVELOPE, description="missing or invalid token"),
        403: OpenApiResponse(_ENVELOPE, description="the account lacks submit_schema"),
        409: OpenApiResponse(_ENVELOPE, description="version applied with a different schema"),
        **_FRAMING,
        500: OpenApiResponse(_ENVELOPE, description="failed: rolled back and recorded"),
        503: OpenApiResponse(
            _ENVELOPE, description="the target database or the service's own is unavailable"
        ),
    },
    "examples": RESPONSE_EXAMPLES,
}
SUBMISSION_STATUS: dict[str, Any] = {
    "operation_id": "wf106_submission_status",
    "summary": "Current status envelope of a stored submission",
    "responses": {
        200: OpenApiResponse(_ENVELOPE, description="the submission's envelope"),
        401: OpenApiResponse(_ENVELOPE, description="missing or invalid token"),
        404: OpenApiResponse(
            _ENVELOPE,
            description="no such submission, or one this account did not send (and it lacks "
            "view_schemasubmission)",
        ),
        503: OpenApiResponse(_ENVELOPE, description="the service's database is unavailable"),
    },
}


class DecisionSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(
        required=False, help_text="Why; required to reject, optional to approve."
    )


DECIDE: dict[str, Any] = {
    "summary": "Approve (apply its stored plan) or reject a submission held for approval",
    "request": DecisionSerializer,
    "responses": {
        200: OpenApiResponse(
            _ENVELOPE,
            description="approve: the apply's outcome (applied, noop); reject: rejected. "
            "result.decision says who decided, when and why",
        ),
        400: OpenApiResponse(_ENVELOPE, description="reject without a reason"),
        401: OpenApiResponse(_ENVELOPE, description="missing or invalid token"),
        403: OpenApiResponse(
            _ENVELOPE,
            description="the account lacks approve_schema, or it submitted the request itself",
        ),
        404: OpenApiResponse(_ENVELOPE, description="no such submission"),
        **_FRAMING,
        409: OpenApiResponse(
            _ENVELOPE,
            description="already decided, or the plan changed since it was shown (nothing ran); "
            "approve may also answer the builder's conflict",
        ),
        500: OpenApiResponse(_ENVELOPE, description="failed: rolled back and recorded"),
        503: OpenApiResponse(_ENVELOPE, description="a database is unavailable"),
    },
}
