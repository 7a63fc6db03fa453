"""The JSON API: /api/v1/…, described by OpenAPI at /api/docs."""

from ninja import NinjaAPI

api = NinjaAPI(
    title="Switchboard API",
    version="1",
    description="Push customer profiles and events, manage preferences and consent.",
    docs_url="/docs",
    openapi_url="/openapi.json",
    urls_namespace="api",
)
