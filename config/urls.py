from django.contrib import admin
from django.urls import include, path, re_path

from config.api import api, not_found

admin.site.site_header = "Switchboard administration"
admin.site.site_title = "Switchboard admin"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    re_path(r"^api/", not_found),
    # Segment's HTTP tracking API, for Segment and RudderStack SDKs pointed here.
    path("v1/", include("customers.source_urls")),
    path("accounts/", include("accounts.urls")),
    path("customers/", include("customers.urls")),
    path("segments/", include("segments.urls")),
    path("campaigns/", include("campaigns.urls")),
    path("journeys/", include("journeys.urls")),
    path("", include("campaigns.tracking_urls")),
    path("", include("dashboards.urls")),
]
