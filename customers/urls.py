from django.urls import path

from . import views
from .imports import views as imports

app_name = "customers"

urlpatterns = [
    path("", views.customer_list, name="list"),
    path("<int:customer_id>/", views.customer_detail, name="detail"),
    path("<int:customer_id>/timeline/", views.customer_timeline, name="timeline"),
    path("<int:customer_id>/subscriptions/", views.subscription_change, name="subscription_change"),
    path("<int:customer_id>/notes/", views.note_add, name="note_add"),
    path("imports/", imports.import_list, name="imports"),
    path("imports/new/", imports.import_new, name="import_new"),
    path("imports/<int:import_id>/", imports.import_detail, name="import_detail"),
    path("imports/<int:import_id>/start/", imports.import_start, name="import_start"),
    path("imports/<int:import_id>/progress/", imports.import_progress, name="import_progress"),
    path("imports/<int:import_id>/report.csv", imports.import_report, name="import_report"),
    path("imports/<int:import_id>/discard/", imports.import_discard, name="import_discard"),
]
