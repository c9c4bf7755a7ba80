"""Admin pages that are about the target database rather than one record: the drift report.

`drift_view` shows what `python manage.py schema_verify` prints: the versions the target's
ledger says were applied, each difference between them and the live database, and the versions
that cannot be verified. It changes nothing. It is for staff holding the view permission on
submissions (the groups of `setup_roles` have it); `urls.py` wraps it in the admin's login.
"""

from __future__ import annotations

import psycopg
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from revos_schema import drift, services
from revos_schema.models import SchemaSubmission

VIEW_PERMISSION = "revos_schema.view_schemasubmission"


def drift_view(request: HttpRequest) -> HttpResponse:
    """The target database compared with everything its ledger says was applied."""
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied
    target_schema = services.builder_settings().target_schema
    report = None
    problem = ""
    try:
        report = drift.drift_report()
    except psycopg.Error as exc:
        problem = f"The target database could not be verified: {exc}"
    context = {
        **admin.site.each_context(request),
        "title": "Drift: the target database compared with its ledger",
        "opts": SchemaSubmission._meta,
        "target_schema": target_schema,
        "report": report,
        "summary": "" if report is None else drift.summary(report, target_schema),
        "problem": problem,
    }
    return TemplateResponse(request, "admin/revos_schema/drift.html", context)
