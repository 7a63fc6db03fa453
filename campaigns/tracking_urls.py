"""Public endpoints reached from messages and providers: no session, signed tokens."""

from anymail import urls as anymail_urls
from django.urls import URLPattern, include, path

from . import tracking, webhooks

app_name = "tracking"

# anymail's webhook views, each refusing calls in production until their secret is set.
esp_webhooks = [
    URLPattern(pattern.pattern, webhooks.esp_webhook_guard(pattern.callback), pattern.default_args, pattern.name)
    for pattern in anymail_urls.urlpatterns
]

urlpatterns = [
    path("t/o/<str:token>.gif", tracking.open_pixel, name="open"),
    path("t/c/<str:token>", tracking.click, name="click"),
    path("u/<str:token>", tracking.unsubscribe, name="unsubscribe"),
    path("p/", tracking.preferences_link_request, name="preferences-request"),
    path("p/<str:token>", tracking.preferences, name="preferences"),
    path("webhooks/twilio/status", webhooks.twilio_status, name="twilio-status"),
    path("webhooks/twilio/inbound", webhooks.twilio_inbound, name="twilio-inbound"),
    path("webhooks/anymail/", include((esp_webhooks, anymail_urls.app_name))),
]
