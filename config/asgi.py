"""ASGI entry point: HTTP through Django, websockets through Channels.

Run with ``uvicorn config.asgi:application``.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Requests share a pool of database connections (see DATABASES in config/settings.py).
os.environ.setdefault("DATABASE_POOL", "1")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
