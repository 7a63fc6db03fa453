"""The open pixel and the click redirect as a small ASGI application in front of Django.

These two URLs take the traffic of every message sent: image proxies and mail clients
loading the pixel, readers following links. Through Django each request crossed the
middleware stack and a thread hop per request (about 4 ms of a worker's time for a token
that does not even verify); here a request verifies the same signed token, hands the hit to
the engagement queue (``campaigns.engagement``) and answers once the hit is safely stored.
Everything else, and every request this route does not fully understand (another method,
an unknown host, a click token that does not verify, a plain-HTTP request where HTTPS is
required), goes to Django unchanged, whose views in ``campaigns.tracking`` give the same
answers they always gave.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

from django.conf import settings
from django.core import signing
from django.core.signals import setting_changed
from django.http.request import split_domain_port, validate_host

from core.hosts import allowed_hosts

from . import links
from .engagement import drainer, recorder
from .models import DeliveryStatus
from .tracking import PIXEL, token_ids

logger = logging.getLogger(__name__)

OPEN_PREFIX, OPEN_SUFFIX, CLICK_PREFIX = "/t/o/", ".gif", "/t/c/"
OPENED, CLICKED = DeliveryStatus.OPENED.value, DeliveryStatus.CLICKED.value
# What Django's never_cache and security middleware send with these answers.
NO_STORE = b"max-age=0, no-cache, no-store, must-revalidate, private"


class TrackingRoute:
    """``/t/o/<token>.gif`` and ``/t/c/<token>`` answered here; everything else by ``app``."""

    def __init__(self, app):
        self.app = app
        self._pid = None
        self._ready = False
        self._urls: OrderedDict[int, str] = OrderedDict()
        # Tests and admins change settings at run time; weakly held, so a dropped route goes away.
        setting_changed.connect(self.settings_changed)

    async def __call__(self, scope, receive, send):
        if self._pid != os.getpid():
            # A process that just started applies what a stopped one answered but left queued.
            self._pid = os.getpid()
            drainer.wake()
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path = scope["path"]
            if path.startswith(OPEN_PREFIX) and path.endswith(OPEN_SUFFIX):
                if await self._open(scope, send, path[len(OPEN_PREFIX):-len(OPEN_SUFFIX)]):
                    return
            elif path.startswith(CLICK_PREFIX):
                if await self._click(scope, send, path[len(CLICK_PREFIX):]):
                    return
        await self.app(scope, receive, send)

    # --- The two endpoints ----------------------------------------------------------------------

    async def _open(self, scope, send, token: str) -> bool:
        """A 1×1 transparent GIF, always; a valid token's GET also records the open."""
        if not self._acceptable(scope):
            return False
        ids = self._verified(token, "open", 1)
        if ids is not None and scope["method"] == "GET":
            # Whether or not the queue took it, the reader sees the image: a lost open (logged
            # by the recorder) is better than a broken picture in someone's inbox.
            await recorder.record(ids[0], OPENED)
        await self._answer(scope, send, 200, self._gif_headers, PIXEL)
        return True

    async def _click(self, scope, send, token: str) -> bool:
        """Record the click and redirect to the link stored for it; anything odd goes to Django."""
        if not self._acceptable(scope) or "/" in token:
            return False
        ids = self._verified(token, "click", 2)
        if ids is None:
            return False  # Django renders the "invalid or expired link" page
        delivery_id, link_id = ids
        url = self._urls.get(link_id)
        if url is None:
            url = await recorder.link_url(link_id)
            if url is None:
                return False  # no such link (or no database): Django answers as it always did
            self._learn_link(link_id, url)
        if scope["method"] == "GET" and not await recorder.record(delivery_id, CLICKED):
            return False  # the queue could not take it: Django records it directly or fails visibly
        location = (b"location", url.encode("latin-1"))
        await self._answer(scope, send, 302, [*self._redirect_headers, location], b"")
        return True

    def _learn_link(self, link_id: int, url: str) -> None:
        """Remember a click destination (links never change once stored)."""
        self._urls[link_id] = url
        if len(self._urls) > settings.TRACKING_LINK_CACHE:
            self._urls.popitem(last=False)

    # --- Checks Django would have made --------------------------------------------------------------

    def _refresh(self) -> None:
        """Signers, headers and the checks' settings, read again after a setting changes."""
        if self._ready:
            return
        self._ready = True
        self._hosts = {}
        self._allowed_hosts = allowed_hosts()
        self._ssl_redirect = settings.SECURE_SSL_REDIRECT
        self._proxy_ssl_header = None
        if settings.SECURE_PROXY_SSL_HEADER:
            header, value = settings.SECURE_PROXY_SSL_HEADER
            self._proxy_ssl_header = (header.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1"), value)
        self._signers = {
            "open": signing.Signer(salt=links.OPEN_SALT),
            "click": signing.Signer(salt=links.CLICK_SALT),
        }
        common = [(b"cache-control", NO_STORE)]
        if settings.SECURE_CONTENT_TYPE_NOSNIFF:
            common.append((b"x-content-type-options", b"nosniff"))
        if settings.SECURE_REFERRER_POLICY:
            policy = settings.SECURE_REFERRER_POLICY
            policy = policy if isinstance(policy, str) else ",".join(policy)
            common.append((b"referrer-policy", policy.encode("latin-1")))
        self._hsts = None
        if settings.SECURE_HSTS_SECONDS:
            value = f"max-age={settings.SECURE_HSTS_SECONDS}"
            value += "; includeSubDomains" if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS else ""
            value += "; preload" if settings.SECURE_HSTS_PRELOAD else ""
            self._hsts = (b"strict-transport-security", value.encode("latin-1"))
        self._gif_headers = [
            (b"content-type", b"image/gif"), (b"content-length", str(len(PIXEL)).encode()), *common,
        ]
        self._redirect_headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"0"), *common]

    def _acceptable(self, scope) -> bool:
        """A request Django would serve: an allowed host, and HTTPS where it is required."""
        self._refresh()
        headers = scope["headers"]
        host = next((value for name, value in headers if name == b"host"), b"").decode("latin-1")
        allowed = self._hosts.get(host)
        if allowed is None:
            domain, _ = split_domain_port(host)
            allowed = bool(domain) and validate_host(domain, self._allowed_hosts)
            if len(self._hosts) < 1000:
                self._hosts[host] = allowed
        if not allowed:
            return False
        scope["tracking.secure"] = secure = self._secure(scope)
        return secure or not self._ssl_redirect

    def _secure(self, scope) -> bool:
        if self._proxy_ssl_header:
            name, value = self._proxy_ssl_header
            sent = next((v for n, v in scope["headers"] if n == name), None)
            if sent is not None:
                return sent.decode("latin-1").split(",")[0].strip() == value
        return scope.get("scheme") == "https"

    def settings_changed(self, **kwargs) -> None:
        self._ready = False

    def _verified(self, token: str, kind: str, count: int) -> tuple[int, ...] | None:
        try:
            value = self._signers[kind].unsign(token)
        except signing.BadSignature:
            return None
        return token_ids(value, count)

    async def _answer(self, scope, send, status: int, headers: list, body: bytes) -> None:
        if self._hsts and scope["tracking.secure"]:
            headers = [*headers, self._hsts]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

