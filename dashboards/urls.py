from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboards/campaigns/<int:campaign_id>/", views.campaign, name="campaign-dashboard"),
]
