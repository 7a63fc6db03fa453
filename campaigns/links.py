"""The links in a message, and where they lead.

Signed links name one delivery (open pixel, click, unsubscribe) or one customer
(preference centre) and nothing else; ``campaigns.tracking`` serves them. Click
destinations are stored server-side, so a tracked link cannot be made to redirect anywhere
else. An email is finished here: its links tracked, the open pixel, the hidden preheader
and the preferences footer added.
"""

from __future__ import annotations

import hashlib
import html
import re

from django.conf import settings
from django.core import signing
from django.db import connection
from django.urls import reverse

# --- Signed links -------------------------------------------------------------------------

OPEN_SALT = "switchboard.open"
CLICK_SALT = "switchboard.click"
UNSUBSCRIBE_SALT = "switchboard.unsubscribe"
# Preference-centre links show the customer's email address and phone number, so they carry
# the time they were made and expire (PREFERENCES_LINK_MAX_AGE). The salt changed with the
# format: the links of old messages (no timestamp, never expiring) no longer open anything.
PREFERENCES_SALT = "switchboard.preferences.timestamped"


def sign(value: str, salt: str) -> str:
    return signing.Signer(salt=salt).sign(value)


def unsign(token: str, salt: str) -> str:
    """The signed value, or raises ``signing.BadSignature``."""
    return signing.Signer(salt=salt).unsign(token)


def sender_name() -> str:
    """Who the messages come from, as recipients see it in their inbox."""
    from email.utils import parseaddr

    name, address = parseaddr(settings.DEFAULT_FROM_EMAIL)
    return name or address.rpartition("@")[2] or "Switchboard"


def absolute(path: str) -> str:
    return settings.SITE_URL + path


def open_url(delivery_id: int) -> str:
    return absolute(reverse("tracking:open", args=[sign(str(delivery_id), OPEN_SALT)]))


def click_url(delivery_id: int, link_id: int) -> str:
    return absolute(reverse("tracking:click", args=[sign(f"{delivery_id}.{link_id}", CLICK_SALT)]))


def unsubscribe_url(delivery_id: int) -> str:
    return absolute(reverse("tracking:unsubscribe", args=[sign(str(delivery_id), UNSUBSCRIBE_SALT)]))


def preferences_token(customer_id: int) -> str:
    """A link token for the customer's preference centre, valid for PREFERENCES_LINK_MAX_AGE."""
    return signing.TimestampSigner(salt=PREFERENCES_SALT).sign(str(customer_id))


def preferences_unsign(token: str) -> str:
    """The customer id in a preference-centre token; raises ``signing.SignatureExpired`` for
    a genuine but expired one and ``signing.BadSignature`` for anything else."""
    try:
        return signing.TimestampSigner(salt=PREFERENCES_SALT).unsign(
            token, max_age=settings.PREFERENCES_LINK_MAX_AGE
        )
    except ValueError:  # a signed value without a timestamp fails to unpack
        raise signing.BadSignature("not a timestamped token") from None


def preferences_url(customer_id: int) -> str:
    return absolute(reverse("tracking:preferences", args=[preferences_token(customer_id)]))


def message_links(*, delivery_id: int, customer_id: int, lazy: bool = False) -> dict:
    """The message's own signed links; ``lazy`` signs them only if a template uses them."""
    if lazy:
        from django.utils.functional import lazy as make_lazy

        return {
            "unsubscribe_url": make_lazy(unsubscribe_url, str)(delivery_id),
            "preferences_url": make_lazy(preferences_url, str)(customer_id),
        }
    return {"unsubscribe_url": unsubscribe_url(delivery_id), "preferences_url": preferences_url(customer_id)}


def sample_links() -> dict:
    return {"unsubscribe_url": absolute("/u/preview"), "preferences_url": absolute("/p/preview")}


# --- Email finishing: tracked links, open pixel, preheader, footer --------------------------

HREF = re.compile(r"""href=(["'])(https?://[^"']+)\1""", re.IGNORECASE)


def links_in(html_body: str) -> list[str]:
    return [html.unescape(match.group(2)) for match in HREF.finditer(html_body)]


def links_store(urls: set[str]) -> dict[str, int]:
    """Link ids for ``urls``, creating the missing ones in one statement."""
    if not urls:
        return {}
    rows = sorted(urls)
    hashes = [hashlib.sha256(url.encode()).hexdigest() for url in rows]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO campaigns_link (url, url_hash)
            SELECT * FROM unnest(%s::text[], %s::text[])
            ON CONFLICT (url_hash) DO NOTHING
            """,
            [rows, hashes],
        )
        cursor.execute("SELECT url, id FROM campaigns_link WHERE url_hash = ANY(%s)", [hashes])
        return dict(cursor.fetchall())


def email_finish(rendered: dict, *, delivery_id: int, link_ids: dict[str, int], links: dict, marketing: bool) -> dict:
    """Tracked links, the open pixel, the hidden preheader and the unsubscribe footer."""
    body = rendered.get("html", "")

    def track(match):
        url = html.unescape(match.group(2))
        if url in (links["unsubscribe_url"], links["preferences_url"]) or url not in link_ids:
            return match.group(0)
        return f'href="{html.escape(click_url(delivery_id, link_ids[url]))}"'

    body = HREF.sub(track, body)
    if rendered.get("preheader"):
        hidden = (
            '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">'
            f"{html.escape(rendered['preheader'])}</div>"
        )
        body = re.sub(r"(<body[^>]*>)", r"\1" + hidden.replace("\\", "\\\\"), body, count=1, flags=re.I) \
            if re.search(r"<body[^>]*>", body, re.I) else hidden + body
    footer_html, footer_text = "", ""
    if links["preferences_url"] not in body and links["unsubscribe_url"] not in body:
        footer_html = (
            '<p style="font-size:12px;color:#6b7280;margin-top:24px">'
            f'<a href="{html.escape(links["preferences_url"])}">Manage your preferences</a>'
            + (f' · <a href="{html.escape(links["unsubscribe_url"])}">Unsubscribe</a>' if marketing else "")
            + "</p>"
        )
    text = rendered.get("text") or html_to_text(rendered.get("html", ""))
    if links["preferences_url"] not in text:
        footer_text = f"\n\n--\nManage your preferences: {links['preferences_url']}"
        if marketing:
            footer_text += f"\nUnsubscribe: {links['unsubscribe_url']}"
    pixel = f'<img src="{html.escape(open_url(delivery_id))}" width="1" height="1" alt="" style="display:none">'
    addition = footer_html + pixel
    if re.search(r"</body>", body, re.I):
        body = re.sub(r"</body>", addition.replace("\\", "\\\\") + "</body>", body, count=1, flags=re.I)
    else:
        body += addition
    finished = {**rendered, "html": body, "text": text + footer_text}
    if marketing:
        # RFC 8058 one-click unsubscribe, and RFC 2369's link for mail clients.
        finished["headers"] = {
            "List-Unsubscribe": f"<{links['unsubscribe_url']}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    return finished


def html_to_text(body: str) -> str:
    text = re.sub(r"(?is)<(script|style).*?</\1>", "", body)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</h\d>|</li>", "\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()
