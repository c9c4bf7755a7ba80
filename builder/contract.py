"""The WF106 orchestration envelope: parsing the request and building the output envelope.

Request: `{meta?, subject?, payload, context?}`; only `payload` is required. `meta` may carry extra
orchestration fields (they pass through untouched); everywhere else unknown keys are errors.
Response: `{meta_out, result, audit}` as in the reference note.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from builder.errors import ValidationIssue

WORKFLOW_NAME = "WF106"
DEFAULT_TENANT = "global"
# Risk gates (phase 2) will add profiles that hold or block changes; until then only the default
# profile exists, and any other value is refused rather than silently treated as "safe".
VALIDATION_PROFILES = ("safe",)

HTTP_STATUS = {
    "applied": 200,
    "noop": 200,
    "preview": 200,
    "pending_approval": 202,
    "blocked": 400,
    "conflict": 409,
    "failed": 500,
}
SUCCESS_STATUSES = frozenset({"applied", "noop", "preview", "pending_approval"})

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
    issues: list[ValidationIssue] = []
    now = now or datetime.now(UTC)
    body = raw if isinstance(raw, dict) else {}
    if not isinstance(raw, dict):
        issues.append(_issue("", "invalid_type", "The request body must be a JSON object."))
    for key in body:
        if key not in TOP_LEVEL_KEYS:
            issues.append(_issue(str(key), "unknown_field", f"Unknown field {key!r}."))

    meta = _object(body, "meta", issues)
    subject = _object(body, "subject", issues, allowed=SUBJECT_KEYS)
    context = _object(body, "context", issues, allowed=CONTEXT_KEYS)
    for key in META_STRING_KEYS:
        _text(meta, key, f"meta.{key}", issues)

    run_id = meta.get("workflow_run_id")
    if not (isinstance(run_id, str) and _RUN_ID_RE.match(run_id)):
        if run_id is not None and isinstance(run_id, str):
            issues.append(
                _issue(
                    "meta.workflow_run_id",
                    "invalid_value",
                    "workflow_run_id may only contain letters, digits and . _ : - (1-128).",
                )
            )
        run_id = f"wr_{uuid.uuid4().hex}"
    filled_meta = {
        **meta,
        "workflow_name": WORKFLOW_NAME,
        "workflow_run_id": run_id,
        "timestamp_utc": now.isoformat().replace("+00:00", "Z"),
    }

    payload = body.get("payload")
    if payload is None and isinstance(raw, dict):
        issues.append(_issue("payload", "required", "The request needs a payload object."))
    flags = payload if isinstance(payload, dict) else {}
    return Envelope(
        meta=filled_meta,
        tenant_id=_tenant(meta, subject, issues),
        actor_id=_text(context, "actor_id", "context.actor_id", issues),
        validation_profile=_profile(context, issues),
        payload=payload,
        workflow_run_id=run_id,
        inputs_hash=sha256_prefixed(raw),
        dry_run=flags.get("dry_run") is True,
        force_apply=flags.get("force_apply") is True,
        issues=tuple(issues),
    )


def _object(
    body: dict[str, Any],
    key: str,
    issues: list[ValidationIssue],
    *,
    allowed: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        issues.append(_issue(key, "invalid_type", f"{key} must be an object."))
        return {}
    if allowed is not None:
        for name in value:
            if name not in allowed:
                issues.append(_issue(f"{key}.{name}", "unknown_field", f"Unknown field {name!r}."))
    return value


def _text(obj: dict[str, Any], key: str, path: str, issues: list[ValidationIssue]) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        issues.append(_issue(path, "invalid_type", f"{path} must be a string."))
        return None
    if len(value) > _MAX_TEXT:
        issues.append(_issue(path, "too_long", f"{path} is longer than {_MAX_TEXT} characters."))
        return None
    return value


def _tenant(meta: dict[str, Any], subject: dict[str, Any], issues: list[ValidationIssue]) -> str:
    meta_tenant = _text(meta, "tenant_id", "meta.tenant_id", [])
    subject_tenant = _text(subject, "tenant_id", "subject.tenant_id", issues)
    if meta_tenant and subject_tenant and meta_tenant != subject_tenant:
        issues.append(
            _issue(
                "subject.tenant_id",
                "conflicting_value",
                "subject.tenant_id and meta.tenant_id name different tenants.",
            )
        )
    tenant = subject_tenant or meta_tenant
    if tenant is None:
        return DEFAULT_TENANT
    if not _TENANT_RE.match(tenant):
        path = "subject.tenant_id" if subject_tenant else "meta.tenant_id"
        issues.append(
            _issue(
                path,
                "invalid_value",
                "tenant_id may only contain letters, digits and . _ : - (1-128 characters).",
            )
        )
        return DEFAULT_TENANT
    return tenant


def _profile(context: dict[str, Any], issues: list[ValidationIssue]) -> str:
    value = _text(context, "validation_profile", "context.validation_profile", issues)
    if value is None:
        return VALIDATION_PROFILES[0]
    if value not in VALIDATION_PROFILES:
        issues.append(
            _issue(
                "context.validation_profile",
                "invalid_value",
                f"Unknown validation profile; expected one of: {', '.join(VALIDATION_PROFILES)}.",
            )
        )
        return VALIDATION_PROFILES[0]
    return value


def _issue(path: str, code: str, message: str) -> ValidationIssue:
    return ValidationIssue(path=path, code=code, message=message)


def idempotency_key(tenant_id: str, version: str, schema_hash: str) -> str:
    """Return `idem:wf106:{tenant}:{version}:{hash}`."""
    return f"idem:wf106:{tenant_id}:{version}:{schema_hash}"


def canonical_dumps(value: object) -> str:
    """Return canonical JSON (sorted keys, no whitespace) of any JSON-like value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_prefixed(value: object) -> str:
    """Return `sha256_<hex>` of the canonical JSON of `value` (meta_out hash format)."""
    return "sha256_" + hashlib.sha256(canonical_dumps(value).encode()).hexdigest()


def output_envelope(
    envelope: Envelope,
    *,
    status: str,
    summary: str,
    latency_ms: int,
    primary_outputs: dict[str, Any],
    result_extra: dict[str, Any] | None = None,
    data_written: list[dict[str, Any]] | None = None,
    external_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build `{meta_out, result, audit}` for one request."""
    result: dict[str, Any] = {
        "status": status,
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
