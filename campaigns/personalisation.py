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

from dataclasses import dataclass, field

from django.template import TemplateSyntaxError

from . import templating
from .links import sample_links

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
