from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from revos_schema.admin_views import drift_view
from revos_schema.api import SchemaBuilderView, SubmissionDecisionView, SubmissionStatusView

handler404 = "revos_schema.api.not_found"

urlpatterns = [
    # Before the admin's own URLs; wrapped in its login (anonymous users are sent to it).
    path("admin/revos_schema/drift/", admin.site.admin_view(drift_view), name="wf106-drift"),
    path("admin/", admin.site.urls),
    path("wf106/schema-builder", SchemaBuilderView.as_view(), name="wf106-schema-builder"),
    path(
        "wf106/schema-builder/submissions/<uuid:submission_id>",
        SubmissionStatusView.as_view(),
        name="wf106-submission",
    ),
    path(
        "wf106/schema-builder/submissions/<uuid:submission_id>/approve",
        SubmissionDecisionView.as_view(action="approve"),
        name="wf106-submission-approve",
    ),
    path(
        "wf106/schema-builder/submissions/<uuid:submission_id>/reject",
        SubmissionDecisionView.as_view(action="reject"),
        name="wf106-submission-reject",
    ),
    path("api/schema/", SpectacularAPIView.as_view(), name="openapi-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="openapi-schema"), name="api-docs"),
]
