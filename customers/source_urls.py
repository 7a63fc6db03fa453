"""The Segment-compatible source API, mounted at /v1/ (see ``customers.sources``)."""

from django.urls import path

from . import sources

app_name = "sources"

urlpatterns = [
    # SDKs post without a trailing slash; "b" is analytics.js's batch path, "import" older SDKs'.
    path("batch", sources.batch, name="batch"),
    path("b", sources.batch, name="batch"),
    path("import", sources.batch, name="batch"),
    path("projects/<str:write_key>/settings", sources.project_settings, name="settings"),
    # identify, track, page, screen, group, alias, or analytics.js's first letters of them.
    path("<str:kind>", sources.message, name="message"),
]
