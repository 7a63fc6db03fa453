"""Websocket routes."""

from django.urls import path

from dashboards import consumers

websocket_urlpatterns = [
    path("ws/dashboards/overview/", consumers.OverviewConsumer.as_asgi()),
    path("ws/dashboards/campaigns/<int:campaign_id>/", consumers.CampaignConsumer.as_asgi()),
    path("ws/journeys/<int:journey_id>/", consumers.JourneyMapConsumer.as_asgi()),
]
