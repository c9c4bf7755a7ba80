"""The WF106 webhook: `POST /wf106/schema-builder` and the submission status endpoint.

The views only translate HTTP to the builder service (`revos_schema.services`) and back. Every
answer, errors included, has the output envelope shape `{meta_out, result, audit}`.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.defaults import page_not_found
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

from builder.errors import ValidationIssue
from builder.request.body import InvalidRequestJSON, parse_request_json
from builder.request.envelope import output_envelope, parse_envelope
from builder.status import Status
from revos_schema import api_docs, approvals
from revos_schema.models import SchemaSubmission
from revos_schema.request_body import (
    BodyTooLarge,
    BodyUnreadable,
    declares_body,
    is_json,
    media_type,
    read_body,
)
from revos_schema.selectors import holds_permission
from revos_schema.services import OutcomeNotStored, store_unreadable, submit_envelope

logger = logging.getLogger(__name__)


SUBMIT_PERMISSION = "revos_schema.submit_schema"


class WebhookTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, refusing a key with a NUL character before any query.

    No token has one, and PostgreSQL refuses it in a query parameter (a 500). gunicorn answers
    400 to such a header itself; other servers may pass it on.
    """

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        if "\x00" in key:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        return super().authenticate_credentials(key)


class CanSubmitSchema(BasePermission):
    """The caller holds `revos_schema.submit_schema` (service accounts need not be staff)."""

    message = "This account lacks the permission revos_schema.submit_schema."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user and holds_permission(request.user, SUBMIT_PERMISSION))


class WebhookView(APIView):
    """Base of the WF106 views: token authentication and envelope-shaped errors."""

    authentication_classes = (WebhookTokenAuthentication,)
    permission_classes: tuple[type[BasePermission], ...] = (IsAuthenticated,)

    def get_exception_handler(self) -> Any:
        return envelope_exception_handler


class SchemaBuilderView(WebhookView):
    """Validate, plan and apply one schema version (or preview it with `payload.dry_run`)."""

    permission_classes = (IsAuthenticated, CanSubmitSchema)
    # Every other method is a 405 in the envelope shape: OPTIONS too (DRF would describe the
    # view; the API is described by its OpenAPI schema).
    http_method_names = ("post",)

    @extend_schema(**api_docs.SUBMIT_SCHEMA)
    def post(self, request: Request) -> Response:
        if not is_json(request):
            raise _unsupported_media_type(request)
        body = _read_json_body(request)
        actor = request.user.get_username()
        if isinstance(body, ValidationIssue):
            refused = _error_response(status.HTTP_400_BAD_REQUEST, Status.BLOCKED, [body])
            submission = store_unreadable(body, refused.data, source="api", actor=actor)
            return Response(_link(refused.data, submission), status=refused.status_code)
        try:
            outcome, submission = submit_envelope(
                body, source="api", actor=actor, user=request.user
            )
        except (psycopg.OperationalError, OutcomeNotStored) as exc:
            return _not_done(exc)
        return Response(_link(outcome.response, submission), status=outcome.http_status)


def _not_done(exc: Exception) -> Response:
    """The answer when the target was unreachable, or an outcome could not be stored."""
    if isinstance(exc, OutcomeNotStored):
        logger.exception("storing the outcome of a submission failed")
        return _error_response(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            Status.FAILED,
            summary=(
                f"Internal error: the request was {exc.outcome.status}, but that could not be "
                "stored. The target database's migration ledger has the record; retrying the "
                "same request is safe."
            ),
        )
    logger.exception("target database unavailable")
    return _error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        Status.FAILED,
        summary="The target database is unavailable; nothing was applied. Retry later.",
    )


class SubmissionStatusView(WebhookView):
    """Return the current status envelope of one stored submission.

    An account reads the submissions it sent; one that holds `view_schemasubmission` or
    `approve_schema` (operators, approvers, superusers) reads every submission. Any other is
    answered as if there were none: a 404 does not tell another service which submissions exist.
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
        result = {**response["result"], "status": submission.status}
        decision = approvals.decision_of(submission)
        if decision is not None:
            result["decision"] = decision
        return Response(
            _link({**response, "result": result}, submission), status=status.HTTP_200_OK
        )


class SubmissionDecisionView(WebhookView):
    """Approve or reject a submission held for approval (`action` is set per URL).

    The rules are `revos_schema.approvals`': the permission `revos_schema.approve_schema`, four
    eyes, one decision per submission, and an approval applies exactly the stored plan.
    """

    http_method_names = ("post",)
    action: str = ""

    @extend_schema(**api_docs.DECIDE)
    def post(self, request: Request, submission_id: str) -> Response:
        reason = _decision_reason(request)
        if isinstance(reason, Response):
            return reason
        try:
            if self.action == "approve":
                outcome, submission = approvals.approve(
                    submission_id, user=request.user, reason=reason
                )
                return Response(_link(outcome.response, submission), status=outcome.http_status)
            submission = approvals.reject(submission_id, user=request.user, reason=reason)
        except SchemaSubmission.DoesNotExist:
            return _error_response(
                status.HTTP_404_NOT_FOUND, "not_found", summary="No such submission."
            )
        except approvals.DecisionRefused as refused:
            word = {400: Status.BLOCKED, 403: "forbidden", 409: Status.CONFLICT}
            return _error_response(
                refused.http_status, word[refused.http_status], summary=refused.message
            )
        except (psycopg.OperationalError, OutcomeNotStored) as exc:
            return _not_done(exc)
        assert submission.response is not None
        return Response(_link(submission.response, submission), status=status.HTTP_200_OK)


def _may_read(user: Any, submission: SchemaSubmission) -> bool:
    """May `user` read `submission`: sent by this account, or it views or decides submissions."""
    if submission.source == SchemaSubmission.Source.API and submission.actor == user.get_username():
        return True
    return bool(
        user.has_perm("revos_schema.view_schemasubmission")
        or user.has_perm(approvals.APPROVE_PERMISSION)
    )


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The project's 404: the envelope under /wf106/ (e.g. a submission id that is no UUID)."""
    if request.path.startswith("/wf106/"):
        body = _error_envelope("not_found", summary="No such resource.")
        return JsonResponse(body, status=status.HTTP_404_NOT_FOUND)
    return page_not_found(request, exception)


def _unsupported_media_type(request: Request) -> exceptions.UnsupportedMediaType:
    """The 415 for a body not declared `application/json`; the body is left unread."""
    sent = media_type(request)
    said = f'it was "{sent}"' if sent else "none was sent"
    return exceptions.UnsupportedMediaType(
        sent, detail=f"Content-Type must be application/json ({said}); nothing was done."
    )


def _read_json_body(request: Request) -> object | ValidationIssue:
    """Return the parsed JSON body, or the issue that makes it unusable."""
    raw = _read_raw_body(request)
    return raw if isinstance(raw, ValidationIssue) else _parse_json(raw)


def _read_raw_body(request: Request) -> bytes | ValidationIssue:
    """Return the body's bytes (chunked too), or the issue that makes them unusable."""
    limit = settings.WF106_MAX_BODY_BYTES
    try:
        return read_body(request, limit)
    except BodyTooLarge:
        return ValidationIssue("", "too_large", f"The request body exceeds {limit} bytes.")
    except BodyUnreadable as exc:
        return ValidationIssue("", "invalid_json", str(exc))


def _parse_json(raw: bytes) -> object | ValidationIssue:
    try:
        return parse_request_json(raw)
    except InvalidRequestJSON as exc:
        return ValidationIssue("", "invalid_json", str(exc))


def _decision_reason(request: Request) -> str | Response:
    """Return the optional `reason` of a decision's body, or the answer that refuses the body.

    A decision may have no body at all (an approval without a reason), and then needs no
    `Content-Type`; a body must be a JSON object, read like the webhook's.
    """
    if declares_body(request) and not is_json(request):
        raise _unsupported_media_type(request)
    raw = _read_raw_body(request)
    if raw == b"":
        return ""
    body = raw if isinstance(raw, ValidationIssue) else _parse_json(raw)
    if isinstance(body, ValidationIssue):
        return _error_response(status.HTTP_400_BAD_REQUEST, Status.BLOCKED, [body])
    reason = body.get("reason", "") if isinstance(body, dict) else None
    if not isinstance(reason, str):
        return _error_response(
            status.HTTP_400_BAD_REQUEST,
            Status.BLOCKED,
            summary="The body must be a JSON object whose optional `reason` is a string.",
        )
    return reason


def _link(response: dict[str, Any], submission: SchemaSubmission) -> dict[str, Any]:
    """Add the stored submission's id and URL to `result`."""
    url = reverse("wf106-submission", kwargs={"submission_id": submission.pk})
    result = {**response["result"], "submission_id": str(submission.pk), "submission_url": url}
    return {**response, "result": result}


def _error_envelope(
    result_status: Status | str,
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
    result_status: Status | str,
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
    status.HTTP_411_LENGTH_REQUIRED: "length_required",
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
        body = _error_envelope(Status.FAILED, summary=summary)
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    response = exception_handler(exc, context)
    if response is None:
        # Not an API error: a bug. Answer in the envelope shape, never with a stack trace.
        logger.error("unhandled error in the WF106 webhook", exc_info=exc)
        body = _error_envelope(Status.FAILED, summary="Internal error; nothing was applied.")
        return Response(body, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    detail = exc.detail if isinstance(exc, exceptions.APIException) else None
    summary = detail if isinstance(detail, str) else "The request was refused."
    result_status = _AUTH_STATUS.get(response.status_code, Status.BLOCKED)
    response.data = _error_envelope(result_status, summary=str(summary))
    return response
