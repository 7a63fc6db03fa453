from django.urls import path

from . import views

app_name = "customers"

urlpatterns = [
    path("", views.customer_list, name="list"),
    path("<int:customer_id>/", views.customer_detail, name="detail"),
    path("<int:customer_id>/timeline/", views.customer_timeline, name="timeline"),
    path("<int:customer_id>/subscriptions/", views.subscription_change, name="subscription_change"),
    path("<int:customer_id>/notes/", views.note_add, name="note_add"),
]
