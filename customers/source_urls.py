"""The Segment-compatible source API, mounted at /v1/ (see ``customers.sources``)."""

from django.urls import path, re_path

from . import sources

app_name = "sources"

urlpatterns = [
    # SDKs post without a trailing slash; "b" is analytics.js's batch path, "import" older SDKs'.
    re_path(r"^(?:batch|b|import)/?$", sources.batch, name="batch"),
    re_path(r"^(?P<kind>identify|track|page|screen|group|alias|i|t|p|s|g|a)/?$", sources.message, name="message"),
    path("projects/<str:write_key>/settings", sources.project_settings, name="settings"),
]
