"""The WF106 webhook: `POST /wf106/schema-builder` and the submission status endpoint.

The views only translate HTTP to the builder service (`revos_schema.services`) and back. Every
answer, errors included, has the output envelope shape `{meta_out, result, audit}`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import BooleanField, F, Func, Model, Value
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.defaults import page_not_found
from drf_spectacular.utils import extend_schema
from psycopg import sql
from rest_framework import exceptions, status
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

from builder.contract import output_envelope, parse_envelope
from builder.errors import ValidationIssue
from builder.request_json import InvalidRequestJSON, parse_request_json
from revos_schema import api_docs
from revos_schema.models import SchemaSubmission
from revos_schema.services import OutcomeNotStored, store_unreadable, submit_envelope

logger = logging.getLogger(__name__)


SUBMIT_PERMISSION = "revos_schema.submit_schema"


class HoldsPermission(Func):
    """Does the user hold the permission (app label, codename), directly or through a group?

    The rule is ModelBackend's, over django.contrib.auth's own tables, for an active user who
    is not a superuser; the PL/pgSQL function is created by migration 0002 (so its query's plan
    is kept for the life of the connection).
    """

    function = "revos_schema_holds_permission"
    output_field = BooleanField()

    def __init__(self, user_id: Any, permission: str) -> None:
        app_label, codename = permission.split(".")
        super().__init__(user_id, Value(app_label), Value(codename))


class WebhookTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, reading in the same query whether the user may submit.

    With Django's own user model and `ModelBackend` as the only authentication backend (this
    project's settings), the token, its user and `HoldsPermission(submit_schema)` are one query
    (`_token_query`); `CanSubmitSchema` uses the answer. Otherwise this is DRF's
    `TokenAuthentication`.
    """

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        if "\x00" in key:
            # No token has one, and PostgreSQL refuses it in a query parameter (a 500). gunicorn
            # answers 400 to such a header itself; other servers may pass it on.
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not _model_backend_only():
            return super().authenticate_credentials(key)
        token = _read_token(self.get_model(), key)
        # As DRF's own authenticate_credentials.
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return (token.user, token)


def _read_token(token_model: type[Model], key: str) -> Any:
    """Return the token `key` with its user and `holds_submit_schema`, or None if none has it.

    One row of `_token_query`: the user's columns, the token's, then whether the user holds
    the submit permission. Both objects are built by `from_db`, as the ORM builds them
    (`_from_row`); the token's `user` is that user. Django's `raw()` did the same for the user
    in about 0.3 ms more per call (0.87-0.95 ms against 0.60-0.78 ms, 1,000 calls in one
    process), most of it finding which columns go to which field.
    """
    user_model = get_user_model()
    connection = connections[router.db_for_read(token_model)]
    with connection.cursor() as cursor:
        cursor.execute(_token_query(token_model), [*SUBMIT_PERMISSION.split("."), key])
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(user_model._meta.concrete_fields)
    user = _from_row(user_model, connection, row[:split])
    token = _from_row(token_model, connection, row[split:-1])
    token.user = user  # type: ignore[attr-defined]
    token.holds_submit_schema = bool(row[-1])  # type: ignore[attr-defined]
    return token


def _from_row(model: type[Model], connection: BaseDatabaseWrapper, values: tuple[Any, ...]) -> Any:
    """`model.from_db` with the values of its concrete fields, in order, as read from the row.

    No database converters are applied: Django's User and DRF's Token (the only models this
    path reads, `_model_backend_only`) have none on PostgreSQL; a test compares both objects,
    field by field, with what the ORM loads.
    """
    fields = model._meta.concrete_fields
    return model.from_db(connection.alias, [field.attname for field in fields], list(values))


@functools.cache
def _token_query(token_model: type[Model]) -> str:
    """The SQL of `_read_token`: the ORM's query, written out once from the models' metadata.

    `Token.objects.select_related("user").annotate(HoldsPermission(...)).get(key=key)` asks the
    same, but building and compiling it took about 1 ms of every request: most of the time of
    authentication, and a fifth of a noop's CPU. The parameters are the permission's app label
    and codename, then the key.
    """
    user = get_user_model()._meta
    token = token_model._meta
    user_id = sql.Identifier("u", user.pk.column)
    query = sql.SQL(
        "SELECT {user_columns}, {token_columns}, revos_schema_holds_permission({user_id}, %s, %s) "
        "FROM {token_table} t JOIN {user_table} u ON {user_id} = {token_user} "
        "WHERE {token_key} = %s"
    ).format(
        user_columns=sql.SQL(", ").join(
            sql.Identifier("u", field.column) for field in user.concrete_fields
        ),
        token_columns=sql.SQL(", ").join(
            sql.Identifier("t", field.column) for field in token.concrete_fields
        ),
        user_id=user_id,
        token_table=sql.Identifier(token.db_table),
        user_table=sql.Identifier(user.db_table),
        token_user=sql.Identifier("t", token.get_field("user").column),
        token_key=sql.Identifier("t", token.pk.column),
    )
    return query.as_string()


class CanSubmitSchema(BasePermission):
    """The caller holds `revos_schema.submit_schema` (service accounts need not be staff).

    `user.has_perm` loads all of the user's permissions in two ORM queries on every call, a
    large share of a webhook request's cost. With Django's own user model and `ModelBackend`
    as the only authentication backend (this project's settings), the same rule (an active
    superuser holds everything; otherwise the permission is held directly or through a group)
    is the database function behind `HoldsPermission`, read with the token
    (`WebhookTokenAuthentication`) or, for any other authentication, in a query of its own.
    With anything else configured, `has_perm` decides.
    """

    message = "This account lacks the permission revos_schema.submit_schema."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not user or not user.is_authenticated or not user.is_active:
            return False
        if not _model_backend_only():
            return bool(user.has_perm(SUBMIT_PERMISSION))
        if user.is_superuser:
            return True
        held = getattr(request.auth, "holds_submit_schema", None)
        if held is None:
            held = (
                get_user_model()
                .objects.filter(pk=user.pk)
                .values_list(HoldsPermission(F("pk"), SUBMIT_PERMISSION), flat=True)
                .first()
            )
        return bool(held)


def _model_backend_only() -> bool:
    return settings.AUTH_USER_MODEL == "auth.User" and settings.AUTHENTICATION_BACKENDS == [
        "django.contrib.auth.backends.ModelBackend"
    ]


class WebhookView(APIView):
    """Base of the WF106 views: token authentication, the permission, envelope-shaped errors."""

    authentication_classes = (WebhookTokenAuthentication,)
    permission_classes = (IsAuthenticated, CanSubmitSchema)

    def get_exception_handler(self) -> Any:
        return envelope_exception_handler


class SchemaBuilderView(WebhookView):
    """Validate, plan and apply one schema version (or preview it with `payload.dry_run`)."""

    # Every other method is a 405 in the envelope shape: OPTIONS too (DRF would describe the
    # view; the API is described by its OpenAPI schema).
    http_method_names = ("post",)

    @extend_schema(**api_docs.SUBMIT_SCHEMA)
    def post(self, request: Request) -> Response:
        body = _read_json_body(request)
        actor = request.user.get_username()
        if isinstance(body, ValidationIssue):
            refused = _error_response(status.HTTP_400_BAD_REQUEST, "blocked", [body])
            submission = store_unreadable(body, refused.data, source="api", actor=actor)
            return Response(_link(refused.data, submission), status=refused.status_code)
        try:
            outcome, submission = submit_envelope(body, source="api", actor=actor)
        except psycopg.OperationalError:
            logger.exception("target database unavailable")
            return _error_response(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "failed",
                summary="The target database is unavailable; nothing was applied. Retry later.",
            )
        except OutcomeNotStored as exc:
            logger.exception("storing the outcome of a submission failed")
            return _error_response(
                status.HTTP_500_INTERNAL_SERVER_ERROR,
                "failed",
                summary=(
                    f"Internal error: the request was {exc.outcome.status}, but that could not be "
                    "stored. The target database's migration ledger has the record; retrying the "
                    "same request is safe."
                ),
            )
        return Response(_link(outcome.response, submission), status=outcome.http_status)


class SubmissionStatusView(WebhookView):
    """Return the current status envelope of one stored submission.

    An account reads the submissions it sent; one that holds `view_schemasubmission` (operators,
    superusers) reads every submission. Any other is answered as if there were none: a 404 does
    not tell another service which submissions exist.
    """

    http_method_names = ("get", "head")

    @extend_schema(**api_docs.SUBMISSION_STATUS)
    def get(self, request: Request, submission_id: str) -> Response:
        submission = SchemaSubmission.objects.filter(pk=submission_id).first()
        if submission is None or not _may_read(request.user, submission):
            return _error_response(
                status.HTTP_404_NOT_FOUND, "not_found", summary="No such submission."
            )
        response = submission.response or _error_envelope(
            submission.status, summary=f"Submission is {submission.status}."
        )
        response = {**response, "result": {**response["result"], "status": submission.status}}
        return Response(_link(response, submission), status=status.HTTP_200_OK)


def _may_read(user: Any, submission: SchemaSubmission) -> bool:
    """May `user` read `submission`: sent by this account, or held `view_schemasubmission`."""
    if submission.source == SchemaSubmission.Source.API and submission.actor == user.get_username():
        return True
    return bool(user.has_perm("revos_schema.view_schemasubmission"))


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The project's 404: the envelope under /wf106/ (e.g. a submission id that is no UUID)."""
    if request.path.startswith("/wf106/"):
        body = _error_envelope("not_found", summary="No such resource.")
        return JsonResponse(body, status=status.HTTP_404_NOT_FOUND)
    return page_not_found(request, exception)


def _read_json_body(request: Request) -> object | ValidationIssue:
    """Return the parsed JSON body, or the issue that makes it unusable."""
    limit = settings.WF106_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    too_large = ValidationIssue("", "too_large", f"The request body exceeds {limit} bytes.")
    if declared > limit:
        return too_large
    try:
        raw = request.body
    except RequestDataTooBig:
        return too_large
    if len(raw) > limit:
        return too_large
    try:
        return parse_request_json(raw)
    except InvalidRequestJSON as exc:
        return ValidationIssue("", "invalid_json", str(exc))


def _link(response: dict[str, Any], submission: SchemaSubmission) -> dict[str, Any]:
    """Add the stored submission's id and URL to `result`."""
    url = reverse("wf106-submission", kwargs={"submission_id": submission.pk})
    result = {**response["result"], "submission_id": str(submission.pk), "submission_url": url}
    return {**response, "result": result}


def _error_envelope(
    result_status: str,
    *,
    summary: str,
    issues: list[ValidationIssue] | None = None,
) -> dict[str, Any]:
    extra = {"validation_errors": [i.to_dict() for i in issues]} if issues else {}
    return output_envelope(
        parse_envelope({}),
        status=result_status,
        summary=summary,
        latency_ms=0,
        primary_outputs={"schema_version": None, "warnings": []},
        result_extra=extra,
    )


def _error_response(
    http_status: int,
    result_status: str,
    issues: list[ValidationIssue] | None = None,
    *,
    summary: str | None = None,
) -> Response:
    if summary is None:
        summary = f"Validation failed: {len(issues or [])} error(s); nothing was executed."
    body = _error_envelope(result_status, summary=summary, issues=issues)
    return Response(body, status=http_status)


_AUTH_STATUS = {
    status.HTTP_401_UNAUTHORIZED: "unauthorized",
    status.HTTP_403_FORBIDDEN: "forbidden",
    status.HTTP_404_NOT_FOUND: "not_found",
    status.HTTP_405_METHOD_NOT_ALLOWED: "method_not_allowed",
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type",
    status.HTTP_429_TOO_MANY_REQUESTS: "throttled",
}


def envelope_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Give DRF's errors (401, 403, 405, ...) the output envelope shape, without internals."""
    if isinstance(exc, OperationalError | InterfaceError):
        # The service's own database (tokens, submissions) cannot be reached: a failure of the
        # service, not of the request, and nothing was done yet. The view answers the target's
        # outage (503) and a failure to store an outcome after the target wrote (500) itself;
        # one while the script ran is rolled back and raised as CallerFailed (500).
        logger.error("the service's database is unavailable", exc_info=exc)
        summary = "The service's database is unavailable; nothing was done. Retry later."
        body = _error_envelope("failed", summary=summary)
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    response = exception_handler(exc, context)
    if response is None:
        # Not an API error: a bug. Answer in the envelope shape, never with a stack trace.
        logger.error("unhandled error in the WF106 webhook", exc_info=exc)
        body = _error_envelope("failed", summary="Internal error; nothing was applied.")
        return Response(body, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    detail = exc.detail if isinstance(exc, exceptions.APIException) else None
    summary = detail if isinstance(detail, str) else "The request was refused."
    result_status = _AUTH_STATUS.get(response.status_code, "blocked")
    response.data = _error_envelope(result_status, summary=str(summary))
    return response
