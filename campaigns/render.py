"""Personalisation: Django template syntax over the customer's fields, in a sandbox.

Templates are compiled by an engine of their own (``campaigns.templating``): no loaders,
an allow-list of tags and filters, and limits on loops, output and time. The context holds
only plain values: the customer's fields, their attributes and the message's own links. A
missing value renders empty; ``default`` gives a fallback (``{{ first_name|default:"there" }}``).
Values are HTML-escaped in HTML parts only: an SMS, a subject or a plain-text part says
``Tom & Jerry's`` as written.

A template that does not compile, or does not render for the sample customer, is refused
when the content is saved (a form or API error naming the field). One that still fails for
a particular customer suppresses that delivery with the reason ``render_failed``.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field

from django.conf import settings
from django.core import signing
from django.db import connection
from django.template import TemplateSyntaxError
from django.urls import reverse

from . import templating

# Which fields each channel's content has, which are templates, and which are required.
CONTENT_FIELDS: dict[str, dict[str, bool]] = {
    "email": {"subject": True, "preheader": False, "html": True, "text": False},
    "sms": {"body": True},
    "whatsapp": {"template": True, "variables": False, "body": False},
    "voice": {"text": True},
    "push": {"title": True, "body": True, "link": False},
}
# The most characters each field may have once rendered: what the providers accept
# (Twilio takes 1,600 characters of SMS, RFC 5322 998 of a subject line). ``variables``
# is per variable.
SMS_MAX_CHARACTERS = 1600
RENDERED_LIMITS: dict[str, dict[str, int]] = {
    "email": {"subject": 998, "preheader": 500, "html": 500_000, "text": 200_000},
    "sms": {"body": SMS_MAX_CHARACTERS},
    "whatsapp": {"template": 512, "variables": 1024, "body": 4096},
    "voice": {"text": 4000},
    "push": {"title": 200, "body": 2000, "link": 2000},
}
OPT_OUT = "Reply STOP to opt out"

SAMPLE_CUSTOMER = {
    "id": 0,
    "external_id": "crm-0001",
    "email": "ada@example.com",
    "phone": "+14155550123",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "full_name": "Ada Lovelace",
    "locale": "en",
    "timezone": "Europe/London",
    "lifecycle_stage": "customer",
    "attributes": {"plan": "pro", "city": "London"},
}
# The longest values a customer's profile columns hold: an SMS must fit for them too.
LONGEST_CUSTOMER = {
    **SAMPLE_CUSTOMER,
    "external_id": "x" * 255, "email": "x" * 242 + "@example.com", "phone": "+" + "9" * 19,
    "first_name": "x" * 150, "last_name": "x" * 150, "locale": "x" * 35, "timezone": "x" * 64,
    "lifecycle_stage": "x" * 64,
}


class TemplateProblem(ValueError):
    """A content field that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _compile(source: str, *, field: str):
    try:
        return templating.compile_template(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(field, f"template error: {exc}") from None
    except templating.RenderProblem as exc:
        raise TemplateProblem(field, str(exc)) from None


@dataclass
class CompiledContent:
    channel: str
    templates: dict
    variables: dict
    sources: dict = field(default_factory=dict)

    def render(self, context: dict) -> dict:
        """Each field rendered for one customer; raises :class:`TemplateProblem` naming the field
        that fails (a sandbox limit, or a value the template cannot handle)."""
        budget = templating.message_budget()
        limits = RENDERED_LIMITS[self.channel]
        rendered = {}
        for name, template in self.templates.items():
            text = self._render(name, template, context, max_chars=limits[name], budget=budget)
            rendered[name] = text if name == "html" else text.strip()
        if self.variables:
            rendered["variables"] = {
                key: self._render(f"variables.{key}", template, context, max_chars=limits["variables"], budget=budget).strip()
                for key, template in self.variables.items()
            }
        return rendered

    @staticmethod
    def _render(name: str, template, context: dict, *, max_chars: int, budget) -> str:
        try:
            return templating.render(template, context, autoescape=(name == "html"), max_chars=max_chars, budget=budget)
        except templating.RenderProblem as exc:
            raise TemplateProblem(name, str(exc)) from None
        except Exception as exc:  # a filter can still fail on values, e.g. a bad date format
            raise TemplateProblem(name, f"does not render: {exc}") from None

    def attributes_read(self) -> dict[str, set[str]]:
        """Field name -> the ``attributes.<key>`` names its template reads."""
        return {name: keys for name, source in self.sources.items() if (keys := templating.attributes_read(source))}


def compile_content(channel: str, body: dict) -> CompiledContent:
    """Check and compile one channel's content; raises :class:`TemplateProblem`.

    The content must render for the sample customer, and an SMS must fit its 1,600
    characters (the opt-out line included) for the customer with the longest names too.
    """
    fields = CONTENT_FIELDS[channel]
    unknown = set(body) - set(fields)
    if unknown:
        name = sorted(unknown)[0]
        raise TemplateProblem(name, f"{channel} content has no field '{name}'; it has: {', '.join(fields)}")
    templates, variables, sources = {}, {}, {}
    for name, required in fields.items():
        value = body.get(name)
        if name == "variables":
            if value in (None, ""):
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise TemplateProblem(name, "variables must be an object of names to text")
            for key, source in value.items():
                variables[str(key)] = _compile(source, field=f"variables.{key}")
                sources[f"variables.{key}"] = source
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise TemplateProblem(name, f"{channel} {name} is required")
            continue
        if not isinstance(value, str):
            raise TemplateProblem(name, f"{name} must be text")
        templates[name] = _compile(value, field=name)
        sources[name] = value
    compiled = CompiledContent(channel, templates, variables, sources)
    sample_render(compiled, SAMPLE_CUSTOMER)
    if channel == "sms":
        try:
            sample_render(compiled, LONGEST_CUSTOMER)
        except TemplateProblem as problem:
            raise TemplateProblem(problem.field, "for a customer with the longest names and addresses a profile "
                                                 f"can hold, {problem.message}") from None
    return compiled


def sample_render(compiled: CompiledContent, customer: dict) -> dict:
    """What ``compiled`` would say to ``customer`` as a marketing message, with preview links:
    the check at save and launch time. Raises :class:`TemplateProblem`."""
    return with_opt_out(compiled.channel, compiled.render(customer_context(customer, links=sample_links())),
                        marketing=True)


def with_opt_out(channel: str, content: dict, *, marketing: bool) -> dict:
    """A marketing text gets the opt-out line unless it mentions STOP; raises
    :class:`TemplateProblem` if the body then passes what the channel accepts."""
    has_text = channel == "sms" or (channel == "whatsapp" and content.get("body"))
    if has_text and marketing and "STOP" not in content.get("body", "").upper():
        content["body"] = (content.get("body", "") + "\n" + OPT_OUT).strip()
    limit = RENDERED_LIMITS[channel].get("body")
    if has_text and limit and len(content["body"]) > limit:
        extra = f" with “{OPT_OUT}”" if content["body"].endswith(OPT_OUT) else ""
        raise TemplateProblem("body", f"the text would be {len(content['body']):,} characters{extra}; at most {limit:,}")
    return content


def customer_context(customer: dict, *, links: dict) -> dict:
    """The only things a template can see: plain copies of the customer's values and links."""
    attributes = customer.get("attributes") or {}
    full_name = " ".join(p for p in (customer.get("first_name"), customer.get("last_name")) if p)
    return {
        "customer_id": customer.get("id"),
        "external_id": customer.get("external_id") or "",
        "email": customer.get("email") or "",
        "phone": customer.get("phone") or "",
        "first_name": customer.get("first_name") or "",
        "last_name": customer.get("last_name") or "",
        "full_name": full_name,
        "locale": customer.get("locale") or "",
        "timezone": customer.get("timezone") or "",
        "lifecycle_stage": customer.get("lifecycle_stage") or "",
        "attributes": dict(attributes) if isinstance(attributes, dict) else {},
        **links,
    }


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


# --- SMS length --------------------------------------------------------------------------

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")


@dataclass
class SmsLength:
    encoding: str  # "GSM-7" or "UCS-2"
    characters: int  # in the encoding's units
    segments: int
    per_segment: int


def sms_length(text: str) -> SmsLength:
    """How an SMS body is encoded and how many segments it takes (the same rule the editor shows)."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text):
        units = sum(2 if ch in GSM7_EXTENDED else 1 for ch in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        # UTF-16 code units: characters outside the BMP (most emoji) take two.
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    if units <= single:
        return SmsLength(encoding, units, 1 if units else 0, single)
    return SmsLength(encoding, units, -(-units // multi), multi)
