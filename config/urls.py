from django.contrib import admin
from django.urls import include, path

from config.api import api

admin.site.site_header = "Switchboard administration"
admin.site.site_title = "Switchboard admin"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("accounts/", include("accounts.urls")),
    path("customers/", include("customers.urls")),
    path("segments/", include("segments.urls")),
    path("campaigns/", include("campaigns.urls")),
    path("", include("campaigns.tracking_urls")),
    path("", include("dashboards.urls")),
]
