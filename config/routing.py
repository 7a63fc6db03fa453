"""Websocket routes."""

from django.urls import path

from dashboards import consumers

websocket_urlpatterns = [
    path("ws/dashboards/overview/", consumers.OverviewConsumer.as_asgi()),
    path("ws/dashboards/campaigns/<int:campaign_id>/", consumers.CampaignConsumer.as_asgi()),
]
