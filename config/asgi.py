"""ASGI entry point: HTTP through Django (tracking links through a lean route in front of it),
websockets through Channels.

Run with ``uvicorn config.asgi:application``.
"""

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Requests share a pool of database connections (see DATABASES in config/settings.py).
os.environ.setdefault("DATABASE_POOL", "1")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from urllib.parse import urlsplit  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http.request import is_same_domain, split_domain_port, validate_host  # noqa: E402

from campaigns.tracking_route import TrackingRoute  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402
from core.hosts import allowed_hosts  # noqa: E402


def origin_allowed(scope) -> bool:
    """Whether a websocket comes from one of the site's own pages, by the rule Django's CSRF
    check applies to a form post: the Origin header, scheme, host and port, is the origin this
    server was reached at (a host in ALLOWED_HOSTS), SITE_URL, or one of CSRF_TRUSTED_ORIGINS
    (``https://*.example.com`` allows subdomains). Channels' AllowedHostsOriginValidator
    compares hosts only, so any port of localhost passed, another local app's page included.
    """
    headers = dict(scope.get("headers", ()))
    try:
        origin = headers[b"origin"].decode("latin1")
    except KeyError:
        return False
    host = headers.get(b"host", b"").decode("latin1")
    domain, _ = split_domain_port(host)
    if domain and validate_host(domain, allowed_hosts()):
        scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
        if origin == f"{scheme}://{host}":
            return True
    trusted = {settings.SITE_URL, *settings.CSRF_TRUSTED_ORIGINS}
    if origin in trusted:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(parsed.netloc, netloc[1:])
        for scheme, netloc in (urlsplit(pattern)[:2] for pattern in trusted if "*" in pattern)
        if scheme == parsed.scheme
    )


class SiteOriginValidator:
    """Refuse websockets opened by pages of other origins (see origin_allowed)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


# The open pixel and click redirect skip Django's request cycle and the protocol router (see
# campaigns.tracking_route); everything else passes through to them.
application = TrackingRoute(ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
))

# What is loaded by now (settings, URL patterns, templates, models) lives as long as the
# process: frozen out of the collector's generations, it is not scanned by every full
# collection, which at thousands of tracking hits a second paused a worker for tens of ms.
gc.freeze()
