"""Public endpoints reached from messages: open pixel, click redirect, unsubscribe, preferences.

Nobody signs in here. The signed token in the URL (see ``campaigns.links``) is the only
key: it names one delivery (pixel, click, unsubscribe) or one customer (preference
centre), and nothing else can be reached from it. A token that does not verify gets a
plain "invalid or expired link" page and writes nothing; the pixel answers its GIF anyway,
so a mail client never shows a broken image.

Preference-centre links show the customer's addresses, so they expire
(``PREFERENCES_LINK_MAX_AGE``); an expired or broken one offers to email a fresh link.
Unsubscribe links never expire: the mailbox's one-click button (RFC 8058) must keep
working for as long as the message sits in someone's inbox.

Under the ASGI server most pixel and click requests never reach these views: the tracking
route (``campaigns.tracking_route``) answers them and queues the hits. These views answer
what it hands on (a click token that does not verify, another method, an unknown host), and
everything when the app is served without that route (the test client, WSGI), recording
the hit directly through the same transitions path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.db import connection, transaction
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from customers.models import ChannelKind, ChannelStatus, ConsentState, Customer, Device, Subscription, Topic
from customers.services.preferences import subscriptions_change

from . import links, preference_links
from .forms import PreferencesLinkForm
from .models import Delivery, DeliveryStatus, Link
from .providers import DeliveryEvent
from .services.delivery_events import delivery_events_apply, engagement_record
from .transitions import MILESTONES

logger = logging.getLogger(__name__)

# The smallest transparent GIF (1×1, one transparent palette entry).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

# How each channel is named to the person who receives it.
CHANNEL_NOUNS = {
    ChannelKind.EMAIL: "emails",
    ChannelKind.SMS: "text messages",
    ChannelKind.WHATSAPP: "WhatsApp messages",
    ChannelKind.VOICE: "phone calls",
    ChannelKind.PUSH: "push notifications",
}
PHONE_CHANNELS = (ChannelKind.SMS, ChannelKind.WHATSAPP, ChannelKind.VOICE)


def _unsigned(token: str, salt: str) -> str | None:
    try:
        return links.unsign(token, salt)
    except signing.BadSignature:
        return None


BIGINT_MAX = 2**63 - 1


def token_ids(value: str | None, count: int) -> tuple[int, ...] | None:
    """``count`` database ids joined by dots, or None."""
    if value is None:
        return None
    parts = value.split(".")
    if len(parts) != count or not all(part.isascii() and part.isdigit() for part in parts):
        return None
    ids = tuple(int(part) for part in parts)
    return ids if all(0 < i <= BIGINT_MAX for i in ids) else None


def _page(request, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    response = render(request, template, {"sender": links.sender_name(), **context}, status=status)
    # The URL carries the token: keep these pages out of search engines.
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


def _invalid(request) -> HttpResponse:
    return _page(request, "tracking/invalid.html", {}, status=404)


# --- Open pixel and click redirect --------------------------------------------------------------

ENGAGEMENT_COLUMNS = {kind: MILESTONES[kind] for kind in (DeliveryStatus.OPENED, DeliveryStatus.CLICKED)}


def _engagement_record(delivery_id: int, kind: str, *, url: str = "") -> None:
    """Apply an open or a click unless this delivery already has one.

    Mail clients and image proxies load the pixel again and again, often at the same
    moment. A primary-key read turns the repeats away without a transaction; simultaneous
    first hits are settled by ``engagement_record``, which locks the row and counts only
    what was not set yet.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM campaigns_delivery WHERE id = %s AND {ENGAGEMENT_COLUMNS[kind]} IS NULL "
            "AND sent_at IS NOT NULL",
            [delivery_id],
        )
        if cursor.fetchone() is None:
            return
    with transaction.atomic():
        engagement_record(delivery_id=delivery_id, kind=kind)


@never_cache
@require_http_methods(["GET", "HEAD"])
def open_pixel(request, token: str):
    """A 1×1 transparent GIF, always; a valid token also records the open."""
    ids = token_ids(_unsigned(token, links.OPEN_SALT), 1)
    # HEAD is a proxy or a scanner checking the image, not someone reading the message.
    if ids is not None and request.method == "GET":
        try:
            _engagement_record(ids[0], DeliveryStatus.OPENED)
        except Exception:
            # A lost open is better than a broken image in someone's inbox.
            logger.exception("could not record the open of delivery %s", ids[0])
    response = HttpResponse(PIXEL, content_type="image/gif")
    response["Content-Length"] = str(len(PIXEL))
    return response


@never_cache
@require_http_methods(["GET", "HEAD"])
def click(request, token: str):
    """Record the click and redirect to the link stored for it; the request never names the URL."""
    ids = token_ids(_unsigned(token, links.CLICK_SALT), 2)
    if ids is None:
        return _invalid(request)
    delivery_id, link_id = ids
    url = Link.objects.filter(pk=link_id).values_list("url", flat=True).first()
    if url is None:
        return _invalid(request)
    if request.method == "GET":
        try:
            _engagement_record(delivery_id, DeliveryStatus.CLICKED, url=url)
        except Exception:
            # The reader still gets where they were going; the click is logged as lost.
            logger.exception("could not record the click of delivery %s", delivery_id)
    return HttpResponseRedirect(url)


# --- Unsubscribe (RFC 8058 one-click, and the page behind the link) ----------------------------------


def _address(customer: Customer, channel: str) -> str:
    if channel == ChannelKind.EMAIL:
        return customer.email or "this address"
    if channel in PHONE_CHANNELS:
        return customer.phone or "this number"
    return "your devices"


def _preferences_path(delivery: Delivery) -> str:
    """Where the unsubscribe page sends someone who wants to choose instead.

    Unsubscribe links never expire, so they must not hand out a fresh preference-centre link
    forever: only a message younger than a preference link's lifetime does; an older one
    leads to the page that emails a fresh link to the customer's address.
    """
    sent_at = delivery.sent_at or delivery.created_at
    if sent_at and timezone.now() - sent_at < settings.PREFERENCES_LINK_MAX_AGE:
        return reverse("tracking:preferences", args=[links.preferences_token(delivery.customer_id)])
    return reverse("tracking:preferences-request")


@csrf_exempt  # RFC 8058: mailbox providers POST without cookies or a CSRF token; the signed token is the key.
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request, token: str):
    """GET asks for confirmation (link scanners prefetch GETs); POST unsubscribes at once.

    The POST unsubscribes the customer from the delivery's topic on the delivery's channel,
    marks the delivery unsubscribed, and is harmless to repeat.
    """
    ids = token_ids(_unsigned(token, links.UNSUBSCRIBE_SALT), 1)
    delivery = (
        Delivery.objects.select_related("customer", "topic").filter(pk=ids[0]).first() if ids is not None else None
    )
    if delivery is None:
        return _invalid(request)
    customer, topic, channel = delivery.customer, delivery.topic, delivery.channel
    context = {
        "topic": topic,
        "channel_noun": CHANNEL_NOUNS[ChannelKind(channel)],
        "address": _address(customer, channel),
        "preferences_path": _preferences_path(delivery),
    }
    if topic.is_transactional:
        return _page(request, "tracking/unsubscribe.html", {**context, "state": "transactional"})
    if request.method == "POST":
        one_click = request.POST.get("List-Unsubscribe") == "One-Click"
        _unsubscribe_apply(delivery, one_click=one_click)
        return _page(request, "tracking/unsubscribe.html", {**context, "state": "done"})
    subscribed = Subscription.objects.filter(customer=customer, topic=topic, channel=channel, subscribed=True).exists()
    return _page(request, "tracking/unsubscribe.html", {**context, "state": "confirm" if subscribed else "already"})


def _unsubscribe_apply(delivery: Delivery, *, one_click: bool) -> None:
    source = "one-click-unsubscribe" if one_click else "unsubscribe-page"
    how = "with one click from the mailbox" if one_click else "on the unsubscribe page"
    with transaction.atomic():
        subscriptions_change(
            customer=delivery.customer,
            changes=[{"topic": delivery.topic.key, "channel": delivery.channel, "subscribed": False}],
            source=source,
            actor=f"customer: {delivery.customer.email or delivery.customer.phone or delivery.customer_id}",
            reason=f"unsubscribed {how} (delivery {delivery.pk})",
        )
        delivery_events_apply(
            events=[DeliveryEvent(DeliveryStatus.UNSUBSCRIBED, timezone.now(), delivery_id=delivery.pk, reason=source)]
        )


# --- Preference centre ------------------------------------------------------------------------


@dataclass
class Cell:
    topic: Topic
    channel: str
    subscribed: bool

    @property
    def value(self) -> str:
        return f"{self.topic.key}:{self.channel}"

    @property
    def label(self) -> str:
        return ChannelKind(self.channel).label


def _channels_for(customer: Customer) -> list[str]:
    """The channels the customer has an address for, in the product's channel order."""
    has = {
        ChannelKind.EMAIL: bool(customer.email),
        ChannelKind.SMS: bool(customer.phone),
        ChannelKind.WHATSAPP: bool(customer.phone),
        ChannelKind.VOICE: bool(customer.phone),
    }
    if Device.objects.filter(customer=customer).exists():
        has[ChannelKind.PUSH] = True
    return [channel for channel in ChannelKind.values if has.get(channel)]


def _stopped_channels(customer: Customer, channels: list[str]) -> list[tuple[str, str]]:
    """Channels on which marketing stops whatever the boxes say, with why, in plain words."""
    notes = {}
    for state in ConsentState.objects.filter(customer=customer, granted=False, channel__in=channels):
        notes[state.channel] = "you withdrew your consent, so we send you no marketing this way"
    wording = {
        ChannelStatus.Status.BOUNCED: "messages to {address} could not be delivered, so we send none",
        ChannelStatus.Status.COMPLAINED: (
            "you reported one of our messages as spam, so we send you no marketing this way"
        ),
        ChannelStatus.Status.UNSUBSCRIBED: "you asked us to stop, so we send you no marketing this way",
    }
    statuses = ChannelStatus.objects.filter(customer=customer, channel__in=channels)
    for status in statuses.exclude(status=ChannelStatus.Status.OK):
        notes[status.channel] = wording[status.status].format(address=_address(customer, status.channel))
    return [(ChannelKind(channel).label, notes[channel]) for channel in channels if channel in notes]


def _preference_changes(post, *, rows: list, current: dict) -> list[dict]:
    """The cells whose wanted state differs from the stored one (a cell never chosen is off)."""
    if post.get("unsubscribe_all"):
        topics = {topic.pk: topic for topic, _ in rows}
        # Cells without an address today count too (a phone number removed since): all means all.
        wanted = {(topics[t], c): False for (t, c), on in current.items() if on and t in topics}
        wanted.update({(cell.topic, cell.channel): False for _, cells in rows for cell in cells})
    else:
        ticked = set(post.getlist("sub"))
        wanted = {(cell.topic, cell.channel): cell.value in ticked for _, cells in rows for cell in cells}
    return [
        {"topic": topic.key, "channel": channel, "subscribed": on}
        for (topic, channel), on in wanted.items()
        if current.get((topic.pk, channel), False) != on
    ]


@never_cache
@ensure_csrf_cookie  # opened from an email by an anonymous visitor: the form's CSRF cookie starts here.
@require_http_methods(["GET", "HEAD", "POST"])
def preferences(request, token: str):
    """The customer's topic × channel matrix; saving changes only the cells that differ."""
    try:
        ids = token_ids(links.preferences_unsign(token), 1)
    except signing.SignatureExpired:
        return _link_request_page(request, PreferencesLinkForm(), state="expired", status=410)
    except signing.BadSignature:
        ids = None
    customer = Customer.objects.filter(pk=ids[0]).first() if ids is not None else None
    if customer is None:
        return _link_request_page(request, PreferencesLinkForm(), state="invalid", status=404)
    channels = _channels_for(customer)
    stored = Subscription.objects.filter(customer=customer, topic__is_transactional=False)
    current = {(topic_id, channel): on for topic_id, channel, on in stored.values_list("topic_id", "channel", "subscribed")}
    rows = [
        (topic, [Cell(topic, channel, current.get((topic.pk, channel), False)) for channel in channels])
        for topic in Topic.objects.filter(is_transactional=False).order_by("name")
    ]
    if request.method == "POST":
        changes = _preference_changes(request.POST, rows=rows, current=current)
        if changes:
            subscriptions_change(
                customer=customer, changes=changes, source="preference-centre",
                actor=f"customer: {customer.email or customer.phone or customer.pk}",
                reason="changed in the preference centre",
            )
        return redirect(f"{request.path}?saved={'all' if request.POST.get('unsubscribe_all') else '1'}")
    return _page(request, "tracking/preferences.html", {
        "customer": customer,
        "channels": [(channel, ChannelKind(channel).label) for channel in channels],
        "rows": rows,
        "stopped": _stopped_channels(customer, channels),
        "transactional": Topic.objects.filter(is_transactional=True).order_by("name").values_list("name", flat=True),
        "saved": request.GET.get("saved", ""),
    })


# --- A fresh preference-centre link by email -----------------------------------------------------


def _link_request_page(request, form, *, state: str, status: int = 200) -> HttpResponse:
    return _page(request, "tracking/preferences_request.html", {
        "form": form, "state": state, "days": settings.PREFERENCES_LINK_MAX_AGE.days,
    }, status=status)


@never_cache
@ensure_csrf_cookie
@require_http_methods(["GET", "HEAD", "POST"])
def preferences_link_request(request):
    """Ask for a fresh preference-centre link; the answer is the same whoever the address belongs to."""
    if request.method != "POST":
        return _link_request_page(request, PreferencesLinkForm(), state="ask")
    form = PreferencesLinkForm(request.POST)
    if not form.is_valid():
        return _link_request_page(request, form, state="ask", status=400)
    preference_links.link_request(email=form.cleaned_data["email"])
    return _link_request_page(request, PreferencesLinkForm(), state="sent")
