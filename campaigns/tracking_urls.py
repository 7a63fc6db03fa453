"""Public endpoints reached from messages and providers: no session, signed tokens."""

from django.urls import include, path

from . import email_tracking, tracking, webhooks

app_name = "tracking"

urlpatterns = [
    path("t/o/<str:token>.gif", tracking.open_pixel, name="open"),
    path("t/c/<str:token>", tracking.click, name="click"),
    path("u/<str:token>", tracking.unsubscribe, name="unsubscribe"),
    path("p/", tracking.preferences_link_request, name="preferences-request"),
    path("p/<str:token>", tracking.preferences, name="preferences"),
    path("webhooks/twilio/status", webhooks.twilio_status, name="twilio-status"),
    path("webhooks/twilio/inbound", webhooks.twilio_inbound, name="twilio-inbound"),
    path("webhooks/anymail/", include(email_tracking.webhook_urls())),
]
