"""Input validation for the campaigns UI.

The compose form only parses what the browser sends (numbers, dates, ``name=value``
lines) into a :class:`~campaigns.services.compose.CampaignInput`; the rules of a valid campaign
live in ``campaigns.services.compose``, whose :class:`~core.errors.FieldError` paths
("variants[1].content.email.subject") are mapped back onto the inputs they are about.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from django import forms
from django.utils import timezone

from customers.models import ChannelKind, Topic
from core.errors import InputError
from core.text import sentence
from segments.models import Segment

from . import personalisation
from .links import sample_links
from .models import Campaign
from .services.compose import CampaignInput, VariantInput

VARIANT_KEYS = ("A", "B", "C")
CHANNELS = list(ChannelKind.values)
CHANNEL_LABELS = dict(ChannelKind.choices)
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]


@dataclass(frozen=True)
class ContentInput:
    """One input of a channel's content: its label, how it is edited, a hint."""

    name: str
    label: str
    kind: str = "text"  # text, textarea, code
    rows: int = 3
    help: str = ""
    placeholder: str = ""


CONTENT_INPUTS: dict[str, list[ContentInput]] = {
    "email": [
        ContentInput("subject", "Subject", placeholder="Hello {{ first_name|default:\"there\" }}"),
        ContentInput("preheader", "Preheader", help="The grey line after the subject in most inboxes."),
        ContentInput("html", "HTML body", kind="code", rows=10,
                     help="Links are tracked; an unsubscribe footer is added unless the body links to it."),
        ContentInput("text", "Plain-text body", kind="textarea", rows=4,
                     help="Made from the HTML when left empty."),
    ],
    "sms": [
        ContentInput("body", "Message", kind="textarea", rows=4,
                     help="Marketing texts get “Reply STOP to opt out” unless they mention STOP."),
    ],
    "whatsapp": [
        ContentInput("template", "Approved template name", placeholder="e.g. winter_sale_v2",
                     help="WhatsApp only delivers templates approved for your sender."),
        ContentInput("variables", "Template variables", kind="code", rows=3, placeholder="1={{ first_name }}\n2={{ attributes.plan }}",
                     help="One per line: name=value. Values may use personalisation."),
        ContentInput("body", "Text as shown to the customer", kind="textarea", rows=3,
                     help="For the timeline and the sandbox outbox."),
    ],
    "voice": [
        ContentInput("text", "Text to speak", kind="textarea", rows=4, help="Read out by text-to-speech when the call is answered."),
    ],
    "push": [
        ContentInput("title", "Title"),
        ContentInput("body", "Body", kind="textarea", rows=2),
        ContentInput("link", "Deep link", placeholder="app://offers/winter", help="Where a tap opens."),
    ],
}

# Variables a template can use, with the value the preview's sample customer has.
PERSONALISATION = [
    ("{{ first_name }}", "First name"),
    ("{{ last_name }}", "Last name"),
    ("{{ full_name }}", "First and last name"),
    ("{{ email }}", "Email address"),
    ("{{ phone }}", "Phone number"),
    ("{{ external_id }}", "Id in your CRM"),
    ("{{ lifecycle_stage }}", "Lifecycle stage"),
    ("{{ locale }}", "Locale"),
    ("{{ attributes.plan }}", "Any custom attribute"),
    ("{{ first_name|default:\"there\" }}", "With a fallback when empty"),
    ("{{ preferences_url }}", "Preference centre link"),
    ("{{ unsubscribe_url }}", "One-click unsubscribe link"),
]


def _field_name(key: str, channel: str, name: str) -> str:
    return f"{key}-{channel}-{name}"


def parse_variables(text: str) -> dict[str, str]:
    """``name=value`` lines into a dict; raises ValueError naming the first bad line."""
    variables: dict[str, str] = {}
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"Line {number} is not name=value.")
        variables[name.strip()] = value.strip()
    return variables


def variables_text(variables) -> str:
    if not isinstance(variables, dict):
        return ""
    return "\n".join(f"{name}={value}" for name, value in variables.items())


def content_body(data, key: str, channel: str) -> dict:
    """The content of one variant on one channel, as submitted; raises ValueError for bad variables."""
    body: dict = {}
    for spec in CONTENT_INPUTS[channel]:
        value = (data.get(_field_name(key, channel, spec.name)) or "").replace("\r\n", "\n")
        if spec.name == "variables":
            variables = parse_variables(value)
            if variables:
                body["variables"] = variables
            continue
        body[spec.name] = value if spec.name == "html" else value.strip()
    return body


@dataclass
class ChannelSection:
    key: str
    channel: str
    label: str
    fields: list = field(default_factory=list)  # [{spec, bound, optional}]
    errors: list[str] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        return bool(self.errors) or any(item["bound"].errors for item in self.fields)


@dataclass
class VariantSection:
    key: str
    index: int
    weight: object
    name: object
    channels: list[ChannelSection]

    @property
    def has_errors(self) -> bool:
        return bool(self.weight.errors) or bool(self.name.errors) or any(c.has_errors for c in self.channels)


class CampaignForm(forms.Form):
    name = forms.CharField(required=False, max_length=200, strip=True)
    topic = forms.ChoiceField(required=False)
    segment_ids = forms.TypedMultipleChoiceField(
        required=False, coerce=int, error_messages={"invalid_choice": "That segment no longer exists."}
    )
    exclude_segment_ids = forms.TypedMultipleChoiceField(
        required=False, coerce=int, error_messages={"invalid_choice": "That segment no longer exists."}
    )
    channels = forms.MultipleChoiceField(required=False, choices=ChannelKind.choices)
    strategy = forms.ChoiceField(choices=Campaign.Strategy.choices, initial=Campaign.Strategy.ALL)
    variant_count = forms.TypedChoiceField(choices=[(n, n) for n in (1, 2, 3)], coerce=int, initial=1)
    goal_event = forms.CharField(required=False, max_length=128, strip=True)
    goal_within_hours = forms.IntegerField(required=False, initial=72)
    schedule = forms.ChoiceField(choices=Campaign.Schedule.choices, initial=Campaign.Schedule.NOW)
    send_at = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS)
    send_at_local = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS)
    throttle_per_minute = forms.IntegerField(required=False)
    staged = forms.BooleanField(required=False)
    test_percent = forms.IntegerField(required=False, initial=20)
    test_metric = forms.ChoiceField(choices=Campaign.TestMetric.choices, initial=Campaign.TestMetric.CLICK)
    test_hours = forms.IntegerField(required=False, initial=4)
    test_channels = forms.BooleanField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["topic"].choices = [("", "Choose a topic…")] + [
            (topic.key, topic.name) for topic in Topic.objects.order_by("is_transactional", "name")
        ]
        self.segments = list(Segment.objects.order_by("name"))
        segment_choices = [(segment.pk, segment.name) for segment in self.segments]
        self.fields["segment_ids"].choices = segment_choices
        self.fields["exclude_segment_ids"].choices = segment_choices
        for position, channel in enumerate(CHANNELS, start=1):
            self.fields[f"order-{channel}"] = forms.IntegerField(required=False, initial=position, min_value=1, max_value=9)
        for key in VARIANT_KEYS:
            self.fields[f"{key}-weight"] = forms.IntegerField(required=False, initial=1)
            self.fields[f"{key}-name"] = forms.CharField(required=False, max_length=120, strip=True)
            for channel, specs in CONTENT_INPUTS.items():
                for spec in specs:
                    self.fields[_field_name(key, channel, spec.name)] = forms.CharField(
                        required=False, strip=spec.name != "html", max_length=100_000
                    )
        self.section_errors: dict[str, list[str]] = {}

    # --- Reading the input ---------------------------------------------------------------

    def clean(self):
        data = super().clean()
        for key in VARIANT_KEYS[: data.get("variant_count") or 1]:
            for channel in data.get("channels") or ():
                name = _field_name(key, channel, "variables") if channel == "whatsapp" else None
                if name:
                    try:
                        parse_variables(self.data.get(name, ""))
                    except ValueError as exc:
                        self.add_error(name, str(exc))
        return data

    def ordered_channels(self) -> list[str]:
        """The ticked channels in fallback order: the order numbers, then the listed order."""
        chosen = self.cleaned_data.get("channels") or []
        position = {channel: index for index, channel in enumerate(CHANNELS)}

        def rank(channel):
            order = self.cleaned_data.get(f"order-{channel}")
            return (order if order is not None else position[channel] + 1, position[channel])

        return sorted(chosen, key=rank)

    def to_input(self) -> CampaignInput:
        """The service input (call after ``is_valid()``)."""
        data = self.cleaned_data
        channels = self.ordered_channels()
        count = data.get("variant_count") or 1
        variants = []
        for key in VARIANT_KEYS[:count]:
            weight = data.get(f"{key}-weight")
            variants.append(VariantInput(
                key=key, weight=1 if weight is None else weight, name=data.get(f"{key}-name") or "",
                content={channel: content_body(self.data, key, channel) for channel in channels},
            ))
        staged = bool(data.get("staged"))
        send_at_local = data.get("send_at_local")
        if send_at_local is not None and timezone.is_aware(send_at_local):
            # A wall-clock time: read in each recipient's zone, so the form's zone is dropped.
            send_at_local = timezone.make_naive(send_at_local)
        return CampaignInput(
            name=data.get("name") or "",
            topic=data.get("topic") or "",
            channels=channels,
            segment_ids=list(data.get("segment_ids") or []),
            exclude_segment_ids=list(data.get("exclude_segment_ids") or []),
            strategy=data.get("strategy") or Campaign.Strategy.ALL,
            variants=variants,
            goal_event=data.get("goal_event") or "",
            goal_within_hours=data.get("goal_within_hours") or 72,
            schedule=data.get("schedule") or Campaign.Schedule.NOW,
            send_at=data.get("send_at"),
            send_at_local=send_at_local,
            throttle_per_minute=data.get("throttle_per_minute"),
            test_percent=data.get("test_percent") if staged else None,
            test_metric=data.get("test_metric") or Campaign.TestMetric.CLICK,
            test_hours=data.get("test_hours") if staged else None,
            test_channels=bool(data.get("test_channels")) and staged,
        )

    # --- Errors from the service ---------------------------------------------------------

    def add_service_errors(self, exc: InputError) -> None:
        """Put each refused field path next to the input it is about."""
        keys = VARIANT_KEYS[: self.cleaned_data.get("variant_count") or 1] if hasattr(self, "cleaned_data") else VARIANT_KEYS
        for error in exc.errors:
            message = sentence(error.message)
            if error.field == "topic" and not self.data.get("topic"):
                message = "Choose a topic."
            target = self._input_for(error.field, keys)
            if target is None:
                self.add_error(None, message)
            elif target in self.fields:
                if target not in self.errors or message not in self.errors[target]:
                    self.add_error(target, message)
            else:
                self.section_errors.setdefault(target, []).append(message)

    def _input_for(self, path: str, keys) -> str | None:
        match = re.fullmatch(r"variants\[(\d+)\]\.(.+)", path)
        if match:
            index = int(match.group(1))
            key, rest = (keys[index] if index < len(keys) else None), match.group(2)
        else:
            key, rest = "A", path
        if key is None:
            return None
        if rest == "weight":
            return f"{key}-weight" if match else None
        if rest.startswith("content."):
            parts = rest.split(".")
            channel = parts[1]
            if channel not in CONTENT_INPUTS:
                return "channels"
            if len(parts) == 2:
                return f"{key}-{channel}"
            name = parts[2]
            known = {spec.name for spec in CONTENT_INPUTS[channel]}
            return _field_name(key, channel, name) if name in known else f"{key}-{channel}"
        if match:
            return None
        if path in ("content", "variants", "status"):
            return None
        return path if path in self.fields else None

    # --- What the template draws ---------------------------------------------------------

    def variant_sections(self) -> list[VariantSection]:
        sections = []
        for index, key in enumerate(VARIANT_KEYS):
            channels = []
            for channel, specs in CONTENT_INPUTS.items():
                required = personalisation.CONTENT_FIELDS[channel]
                channels.append(ChannelSection(
                    key=key, channel=channel, label=CHANNEL_LABELS[channel],
                    fields=[
                        {"spec": spec, "bound": self[_field_name(key, channel, spec.name)], "optional": not required.get(spec.name)}
                        for spec in specs
                    ],
                    errors=self.section_errors.get(f"{key}-{channel}", []),
                ))
            sections.append(VariantSection(key, index, self[f"{key}-weight"], self[f"{key}-name"], channels))
        return sections

    def channel_rows(self) -> list[dict]:
        """The channel checkboxes in the order they were ranked."""
        chosen = set(self["channels"].value() or [])
        rows = []
        for position, channel in enumerate(CHANNELS, start=1):
            order = self[f"order-{channel}"].value()
            rows.append({"channel": channel, "label": CHANNEL_LABELS[channel], "checked": channel in chosen,
                         "order": order if order not in (None, "") else position, "order_field": self[f"order-{channel}"]})
        return rows

    def chosen_segments(self, name: str) -> set[int]:
        values = self[name].value() or []
        return {int(v) for v in values if str(v).isdigit()}

    def selected_variant_count(self) -> int:
        value = self["variant_count"].value()
        try:
            return max(1, min(3, int(value)))
        except (TypeError, ValueError):
            return 1



def initial_from(data: CampaignInput) -> dict:
    """Form values that show an existing campaign."""
    initial = {
        "name": data.name, "topic": data.topic, "segment_ids": data.segment_ids,
        "exclude_segment_ids": data.exclude_segment_ids, "channels": data.channels, "strategy": data.strategy,
        "variant_count": max(1, min(3, len(data.variants))), "goal_event": data.goal_event,
        "goal_within_hours": data.goal_within_hours, "schedule": data.schedule,
        "send_at": timezone.localtime(data.send_at).strftime("%Y-%m-%dT%H:%M") if data.send_at else "",
        "send_at_local": data.send_at_local.strftime("%Y-%m-%dT%H:%M") if data.send_at_local else "",
        "throttle_per_minute": data.throttle_per_minute, "staged": bool(data.test_percent),
        "test_percent": data.test_percent or 20, "test_metric": data.test_metric,
        "test_hours": data.test_hours or 4, "test_channels": data.test_channels,
    }
    unchosen = [channel for channel in CHANNELS if channel not in data.channels]
    for position, channel in enumerate(list(data.channels) + unchosen, start=1):
        initial[f"order-{channel}"] = position
    for variant in data.variants[: len(VARIANT_KEYS)]:
        key = variant.key if variant.key in VARIANT_KEYS else VARIANT_KEYS[data.variants.index(variant)]
        initial[f"{key}-weight"] = variant.weight
        initial[f"{key}-name"] = variant.name
        for channel, body in variant.content.items():
            for spec in CONTENT_INPUTS.get(channel, []):
                value = body.get(spec.name, "")
                initial[_field_name(key, channel, spec.name)] = variables_text(value) if spec.name == "variables" else value
    return initial


def preview_content(data) -> tuple[str, str, dict | None, str]:
    """(variant key, channel, rendered content or None, problem) for the compose preview."""
    key = data.get("preview_variant") if data.get("preview_variant") in VARIANT_KEYS else "A"
    channel = data.get("preview_channel") if data.get("preview_channel") in CONTENT_INPUTS else "email"
    try:
        body = content_body(data, key, channel)
    except ValueError as exc:
        return key, channel, None, str(exc)
    # Half-written content still previews: a required field left empty renders as empty.
    blank = {name for name, required in personalisation.CONTENT_FIELDS[channel].items()
             if required and name != "variables" and not str(body.get(name) or "").strip()}
    try:
        compiled = personalisation.compile_content(channel, {**body, **{name: "-" for name in blank}})
    except personalisation.TemplateProblem as problem:
        label = next((spec.label for spec in CONTENT_INPUTS[channel] if spec.name == problem.field.split(".")[0]), problem.field)
        return key, channel, None, f"{label}: {problem.message}"
    rendered = compiled.render(personalisation.customer_context(personalisation.SAMPLE_CUSTOMER, links=sample_links()))
    # Rendered templates come back marked safe; as plain text again (as the sandbox stores
    # them) the page escapes them like any other value.
    rendered = json.loads(json.dumps(rendered))
    return key, channel, {**rendered, **{name: "" for name in blank}}, ""


class OutboxFilterForm(forms.Form):
    channel = forms.ChoiceField(required=False, choices=[("", "All channels"), *ChannelKind.choices])
    campaign = forms.IntegerField(required=False, min_value=1)
    before = forms.IntegerField(required=False, min_value=1)

    def filters(self) -> dict:
        """Filters for the outbox; an invalid value counts as unset."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        return {"channel": data.get("channel", ""), "campaign_id": data.get("campaign"), "before": data.get("before")}


class PreferencesLinkForm(forms.Form):
    """Asks for the address a fresh preference-centre link should go to."""

    email = forms.EmailField(label="Your email address", max_length=254,
                             error_messages={"required": "Enter the email address our messages come to.",
                                             "invalid": "Enter an email address like name@example.com."})
