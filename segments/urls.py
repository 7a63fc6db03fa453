from django.urls import path

from . import views

app_name = "segments"

urlpatterns = [
    path("", views.segment_list, name="list"),
    path("new/", views.segment_new, name="new"),
    path("preview/", views.segment_preview, name="preview"),
    path("<int:segment_id>/", views.segment_detail, name="detail"),
    path("<int:segment_id>/edit/", views.segment_edit, name="edit"),
    path("<int:segment_id>/delete/", views.segment_delete, name="delete"),
    path("<int:segment_id>/recompute/", views.segment_recompute, name="recompute"),
    path("<int:segment_id>/progress/", views.segment_progress, name="progress"),
    path("<int:segment_id>/members/", views.segment_members, name="members"),
    path("<int:segment_id>/members/add/", views.members_add, name="members_add"),
    path("<int:segment_id>/members/remove/", views.members_remove, name="members_remove"),
    path("<int:segment_id>/check/", views.segment_check, name="check"),
    path("<int:segment_id>/why/<int:customer_id>/", views.segment_why, name="why"),
    path("customers/<int:customer_id>/", views.customer_segments, name="customer_segments"),
]
