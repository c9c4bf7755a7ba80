"""The WF106 orchestration envelope: parsing the request and building the output envelope.

Request: `{meta?, subject?, payload, context?}`; only `payload` is required. `meta` may carry extra
orchestration fields (they pass through untouched); everywhere else unknown keys are errors.
Response: `{meta_out, result, audit}` as in the reference note.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from builder.errors import ValidationIssue
from builder.request.body import (
    RequestObject,
    find_unusable,
    sha256_prefixed,
)
from builder.request.fields import IssueLog, as_object, check_keys, key_path, read_string
from builder.status import SUCCESS_STATUSES, Status

WORKFLOW_NAME = "WF106"
DEFAULT_TENANT = "global"
# How much risk the caller accepts for the changes of a request, from `safe` (the default) to
# `permissive`; `review` holds the request for an approver. Any other value is refused rather
# than silently treated as `safe`.
SAFE_PROFILE = "safe"
REVIEW_PROFILE = "review"
PERMISSIVE_PROFILE = "permissive"
VALIDATION_PROFILES = (SAFE_PROFILE, REVIEW_PROFILE, PERMISSIVE_PROFILE)

TOP_LEVEL_KEYS = ("meta", "subject", "payload", "context")
META_STRING_KEYS = ("tenant_id", "idempotency_key", "workflow_run_id", "workflow_name")
SUBJECT_KEYS = ("tenant_id",)
CONTEXT_KEYS = ("actor_id", "validation_profile")

_TENANT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_MAX_TEXT = 200


@dataclass(frozen=True)
class Envelope:
    """The parsed request with defaults filled in; `payload` is still raw (see normalize)."""

    meta: dict[str, Any]
    tenant_id: str
    actor_id: str | None
    validation_profile: str
    payload: object
    workflow_run_id: str
    inputs_hash: str
    dry_run: bool = False
    force_apply: bool = False
    issues: tuple[ValidationIssue, ...] = field(default_factory=tuple)


def parse_envelope(raw: object, *, now: datetime | None = None) -> Envelope:
    """Parse `raw` into an Envelope, collecting every problem in `Envelope.issues`.

    A usable Envelope is always returned (with defaults where the input was unusable), so that
    even a blocked request gets a proper output envelope with its run id.
    """
    log = IssueLog()
    now = now or datetime.now(UTC)
    # A body read by `parse_request_json` was checked and hashed there.
    unusable = None if isinstance(raw, RequestObject) else find_unusable(raw)
    if unusable is None:
        body = as_object(raw, "", log, "The request body") or {}
    else:
        # Callers that read the body with request_json never get here; direct callers may. Such
        # a value is not read further (it may be too deep even to hash).
        log.add("", "invalid_json", unusable)
        raw, body = None, {}
    check_keys(body, TOP_LEVEL_KEYS, "", log)
    meta = _section(body, "meta", log, allowed=None)
    subject = _section(body, "subject", log, allowed=SUBJECT_KEYS)
    context = _section(body, "context", log, allowed=CONTEXT_KEYS)
    for key in META_STRING_KEYS:
        _text(meta, key, "meta", log)

    run_id = _matching(meta, "workflow_run_id", "meta", _RUN_ID_RE, log)
    run_id = run_id or f"wr_{uuid.uuid4().hex}"
    filled_meta = {
        **meta,
        "workflow_name": WORKFLOW_NAME,
        "workflow_run_id": run_id,
        "timestamp_utc": now.isoformat().replace("+00:00", "Z"),
    }

    payload = body.get("payload")
    if payload is None and isinstance(raw, Mapping):
        log.add("payload", "required", "The request needs a payload object.")
    flags = payload if isinstance(payload, Mapping) else {}
    return Envelope(
        meta=filled_meta,
        tenant_id=_tenant(meta, subject, log),
        actor_id=_text(context, "actor_id", "context", log),
        validation_profile=_profile(context, log),
        payload=payload,
        workflow_run_id=run_id,
        inputs_hash=raw.inputs_hash if isinstance(raw, RequestObject) else sha256_prefixed(raw),
        dry_run=flags.get("dry_run") is True,
        force_apply=flags.get("force_apply") is True,
        issues=tuple(log.items),
    )


def _section(
    body: Mapping[object, object], key: str, log: IssueLog, *, allowed: tuple[str, ...] | None
) -> dict[str, Any]:
    """Return the optional object `key` of the envelope ({} if absent or unusable)."""
    value = body.get(key)
    if value is None:
        return {}
    section = as_object(value, key, log, key)
    if section is None:
        return {}
    if allowed is not None:
        check_keys(section, allowed, key, log)
    return {str(k): v for k, v in section.items()}


def _text(obj: Mapping[str, Any], key: str, path: str, log: IssueLog) -> str | None:
    """Return the optional short string `key`, logging a wrong type or a too long value."""
    value = read_string(cast(Mapping[object, object], obj), key, path, log, required=False)
    if value is not None and len(value) > _MAX_TEXT:
        log.add(key_path(path, key), "too_long", f"{key} is longer than {_MAX_TEXT} characters")
        return None
    return value


def _matching(
    obj: Mapping[str, Any], key: str, path: str, pattern: re.Pattern[str], log: IssueLog
) -> str | None:
    """Return the optional string `key` if it matches `pattern`; log `invalid_value` if not."""
    value = _text(obj, key, path, IssueLog())  # wrong types are logged by the caller's pass
    if value is None or pattern.fullmatch(value):
        return value
    log.add(
        key_path(path, key),
        "invalid_value",
        f"{key} may only contain letters, digits and . _ : - (1-128 characters)",
    )
    return None


def _tenant(meta: Mapping[str, Any], subject: Mapping[str, Any], log: IssueLog) -> str:
    meta_tenant = _matching(meta, "tenant_id", "meta", _TENANT_RE, log)
    _text(subject, "tenant_id", "subject", log)  # logs a wrong type; meta's are logged already
    subject_tenant = _matching(subject, "tenant_id", "subject", _TENANT_RE, log)
    if meta_tenant and subject_tenant and meta_tenant != subject_tenant:
        log.add(
            "subject.tenant_id",
            "conflicting_value",
            "subject.tenant_id and meta.tenant_id name different tenants",
        )
    return subject_tenant or meta_tenant or DEFAULT_TENANT


def _profile(context: Mapping[str, Any], log: IssueLog) -> str:
    value = _text(context, "validation_profile", "context", log)
    if value is None:
        return SAFE_PROFILE
    if value not in VALIDATION_PROFILES:
        log.add(
            "context.validation_profile",
            "invalid_value",
            f"unknown validation profile; expected one of: {', '.join(VALIDATION_PROFILES)}",
        )
        return SAFE_PROFILE
    return value


def idempotency_key(tenant_id: str, version: str, schema_hash: str) -> str:
    """Return `idem:wf106:{tenant}:{version}:{hash}`."""
    return f"idem:wf106:{tenant_id}:{version}:{schema_hash}"


def output_envelope(
    envelope: Envelope,
    *,
    status: Status | str,
    summary: str,
    latency_ms: int,
    primary_outputs: dict[str, Any],
    result_extra: dict[str, Any] | None = None,
    data_written: list[dict[str, Any]] | None = None,
    external_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build `{meta_out, result, audit}` for one request.

    `status` is a `Status`, or for an answer the builder never gives (`unauthorized`, `not_found`)
    a word of the API's own.
    """
    result: dict[str, Any] = {
        "status": str(status),
        "summary": summary,
        "primary_outputs": primary_outputs,
        **(result_extra or {}),
    }
    return {
        "meta_out": {
            "workflow_name": WORKFLOW_NAME,
            "workflow_run_id": envelope.workflow_run_id,
            "latency_ms": latency_ms,
            "success": status in SUCCESS_STATUSES,
            "inputs_hash": envelope.inputs_hash,
            "outputs_hash": sha256_prefixed(result),
        },
        "result": result,
        "audit": {
            # The builder writes schema (DDL) and its ledger, never patient data.
            "phi_touched": False,
            "data_written": data_written or [],
            "external_calls": external_calls or [],
        },
    }
