"""Requests to addresses that customers' admins type in: webhooks of journey steps and the
outgoing webhooks of the event stream.

**Destinations.** :func:`url_problem` refuses what may not be called: anything but http(s),
URLs with credentials, and, unless ``WEBHOOK_ALLOWED_HOSTS`` (or the older
``JOURNEY_WEBHOOK_ALLOWED_HOSTS``) lists the host (an exact name or IP, or ``.example.com``
for the domain and its subdomains), internal hosts: private, loopback, link-local,
reserved, multicast and unspecified IPs (v4 and v6, IPv4-mapped, 6to4 and NAT64 forms too)
and names such as ``localhost``, ``*.local`` or ``*.internal``. With an allow-list, only its
hosts may be called. Because a public name can resolve to an internal address,
:func:`post` resolves the name once when it sends, refuses the call if any address is
internal (unless the host is on the allow-list), and connects to the address it checked:
the name is sent as ``Host`` and as the TLS server name, and certificates are verified
against it, so a second DNS answer (rebinding) never reaches the socket. Proxies from the
environment are not used, and redirects are not followed: either would connect somewhere
that was not checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from django.conf import settings

MAX_URL_LENGTH = 2000
# An answer larger than this is not read further (and not stored).
MAX_RESPONSE_BYTES = 256 * 1024

INTERNAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".lan")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Legacy IPv4 spellings that resolvers accept: 2130706433, 0x7f.1, 127.1.
LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}")


# --- Destinations ---------------------------------------------------------------------------------


class Refused(Exception):
    """A destination webhooks may not reach; nothing is sent to it."""


def allowed_hosts() -> list[str]:
    """``WEBHOOK_ALLOWED_HOSTS``, with the entries of the older ``JOURNEY_WEBHOOK_ALLOWED_HOSTS``
    (which named the list when only journeys sent webhooks), read when called."""
    entries = [*settings.WEBHOOK_ALLOWED_HOSTS, *getattr(settings, "JOURNEY_WEBHOOK_ALLOWED_HOSTS", ())]
    return [entry.strip().lower().rstrip(".") for entry in entries if entry.strip()]


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells, in any form a resolver would accept, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def host_allowed(host: str) -> bool:
    """Whether the allow-list (:func:`allowed_hosts`) names ``host`` (exactly, or by a ``.domain`` entry)."""
    host = _normal_host(host)
    literal = ip_literal(host)
    for entry in allowed_hosts():
        if entry.startswith("."):
            if host == entry[1:] or host.endswith(entry):
                return True
        elif host == entry or (literal is not None and literal == ip_literal(entry.strip("[]"))):
            return True
    return False


def internal_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is not a public unicast address (or hides one that is not)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour]
        if ip in NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(address is not None and internal_address(address) for address in embedded):
            return True
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
        or ip.is_unspecified or not ip.is_global
    )


def _internal_name(host: str) -> bool:
    # A name without a dot is looked up in the local search domains: an internal host.
    return host in INTERNAL_NAMES or host.endswith(INTERNAL_SUFFIXES) or "." not in host


def url_problem(url: object) -> str | None:
    """Why ``url`` cannot be a webhook destination, or None.

    Reads the allow-list when called. Names are checked as written; what
    they resolve to is checked again when the call is sent (:func:`destination`)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        return f"must be a URL of at most {MAX_URL_LENGTH:,} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return "must be a valid http or https URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain a user name or password (receivers check the signature instead)"
    if any(character.isspace() for character in url):
        return "must not contain spaces"
    host = _normal_host(parts.hostname)
    if allowed_hosts():
        if not host_allowed(host):
            return f"{host} is not an allowed webhook host (WEBHOOK_ALLOWED_HOSTS)"
        return None
    literal = ip_literal(host)
    if literal is not None:
        if internal_address(literal):
            return f"must not point at an internal address ({literal})"
        return None
    if _internal_name(host):
        return f"must be a public host name ({host} is internal)"
    return None


@dataclass(frozen=True)
class Destination:
    """Where a call goes: the URL, and the address its host resolved to when it was checked."""

    url: httpx.URL
    address: str

    @property
    def server_name(self) -> str:
        return self.url.raw_host.decode("ascii")


def destination(url: str) -> Destination:
    """Check ``url`` again and resolve its host once; raises :class:`Refused` for a destination
    that is not allowed (an internal address, unless the host is on the allow-list), and
    ``OSError`` when the name does not resolve (a temporary failure)."""
    problem = url_problem(url)
    if problem:
        raise Refused(f"Refused: the URL {problem}.")
    target = httpx.URL(url)
    name = target.raw_host.decode("ascii")
    port = target.port or (443 if target.scheme == "https" else 80)
    found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    addresses = [info[4][0] for info in found]
    if not addresses:
        raise OSError(f"{name} has no address")
    if not host_allowed(name):
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if internal_address(ip):
                raise Refused(f"Refused: {name} resolves to the internal address {ip}.")
    return Destination(url=target, address=addresses[0].split("%", 1)[0])


# --- Clients -----------------------------------------------------------------------------------------


class Clients:
    """httpx clients for a batch, one per (server name, address): a kept-alive connection is
    only reused for the name it was opened (and its certificate checked) for."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: dict[tuple, httpx.Client] = {}

    def get(self, key: tuple) -> httpx.Client:
        with self.lock:
            client = self.clients.get(key)
            if client is None:
                # trust_env=False: an HTTP(S)_PROXY from the environment would connect for us.
                client = self.clients[key] = httpx.Client(trust_env=False, follow_redirects=False)
            return client

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool


# --- Sending ------------------------------------------------------------------------------------------


def post(url: str, *, body: bytes, headers: dict[str, str], timeout: float, clients: Clients,
         max_bytes: int = MAX_RESPONSE_BYTES) -> Answer:
    """POST ``body`` to ``url`` at the address its host resolved to when checked, reading at
    most ``max_bytes`` of the answer and for at most ``timeout`` seconds in all. Raises
    :class:`Refused`, ``OSError`` (name resolution) or ``httpx.HTTPError`` (timeouts,
    network errors)."""
    target = destination(url)
    headers = {"Host": target.url.netloc.decode("ascii"), **headers}
    pinned = target.url.copy_with(host=target.address)
    extensions = {} if ip_literal(target.server_name) else {"sni_hostname": target.server_name}
    client = clients.get((target.url.scheme, target.server_name, target.address, target.url.port))
    started = time.monotonic()
    with client.stream(
        "POST", pinned, content=body, headers=headers, timeout=httpx.Timeout(timeout), extensions=extensions
    ) as response:
        chunks, size, truncated = [], 0, False
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                truncated = True
                break
            if time.monotonic() - started > timeout:
                raise httpx.ReadTimeout("the answer took longer than the timeout")
        return Answer(response.status_code, response.headers, b"".join(chunks), truncated)
