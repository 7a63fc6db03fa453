"""The builder's side panel: one form per node type, and one for the journey's settings.

A form only parses what the browser sends (numbers, times, JSON, ``name=weight`` lines)
into the node's ``config`` (the keys ``journeys.graph`` checks); whether the config is
right is decided by :func:`journeys.graph.problems`, whose :class:`~journeys.graph.Problem`
fields ("config.minutes", "config.branches[1].port", "settings.goal.event") are put back
next to the input they are about with :meth:`NodeForm.add_problems`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django import forms

from campaigns.forms import CONTENT_INPUTS, content_body, variables_text
from core.text import sentence
from customers.models import ChannelKind, Topic
from customers.validation import format_path, unstorable
from segments.models import Segment

from . import graph as graphs
from .models import Action

# The send node's content inputs carry the compose form's names for its first variant
# ("A-email-subject"), so campaigns' own parsing (content_body) reads them.
CONTENT_KEY = "A"
UNITS = [("minutes", "minutes"), ("hours", "hours"), ("days", "days")]
UNIT_MINUTES = {"minutes": 1, "hours": 60, "days": 60 * 24}
WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]
CHANNEL_CHOICES = [(value, label) for value, label in ChannelKind.choices]
TIME_WIDGET = forms.TimeInput(attrs={"type": "time"}, format="%H:%M")

CONTEXT_EXAMPLE = '[{"path": "entry.cart_total", "op": "gte", "value": 50}]'
RULE_EXAMPLE = '{"all": [{"event": "app_opened", "within_days": 3, "count": {"op": "gte", "value": 1}}]}'
WHERE_EXAMPLE = '[{"prop": "total", "op": "gte", "value": 50}]'


def _text(**attrs) -> forms.Widget:
    return forms.TextInput(attrs=attrs)


class JSONTextField(forms.CharField):
    """JSON typed into a textarea: an object or a list (``kind``); empty is None."""

    def __init__(self, *, kind: type, rows: int = 4, **kwargs):
        self.kind = kind
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": rows, "class": "mono", "spellcheck": "false"}))
        super().__init__(strip=True, **kwargs)

    def prepare_value(self, value):
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False)

    def to_python(self, value):
        text = super().to_python(value)
        if not text:
            return None
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"This is not valid JSON ({exc}).") from None
        if not isinstance(parsed, self.kind):
            what = "an object {…}" if self.kind is dict else "a list […]"
            raise forms.ValidationError(f"This must be {what}.")
        unusable = next(unstorable(parsed), None)
        if unusable:
            where, message = unusable
            raise forms.ValidationError(sentence(f"{format_path(where)} {message}" if where else message))
        return parsed


def split_minutes(minutes: Any) -> tuple[Any, str]:
    """A number of minutes as an amount and the largest unit that divides it: 2880 → (2, "days")."""
    if isinstance(minutes, int) and not isinstance(minutes, bool) and minutes > 0:
        for unit in ("days", "hours"):
            if minutes % UNIT_MINUTES[unit] == 0:
                return minutes // UNIT_MINUTES[unit], unit
    return minutes, "minutes"


@dataclass
class Row:
    """One input as the panel draws it: the bound field, and the kinds it belongs to."""

    field: forms.BoundField
    when: str = ""  # "kind:event,api": shown only while the form's kind is one of these
    unit: forms.BoundField | None = None  # a unit select drawn beside a number
    help: str = ""

    @property
    def is_choice_list(self) -> bool:
        return isinstance(self.field.field.widget, forms.CheckboxSelectMultiple)


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    open: bool = True
    collapsible: bool = False


class NodeForm(forms.Form):
    """The label every node has, and its type's settings (subclasses)."""

    node_type: ClassVar[str] = ""
    # Input → the kinds it is shown for ("kind:event").
    when: ClassVar[dict[str, str]] = {}
    help_texts: ClassVar[dict[str, str]] = {}

    label = forms.CharField(required=False, max_length=120, strip=True,
                            help_text="How the step is named on the canvas and in reports.")

    def __init__(self, data=None, *, node: dict, **kwargs):
        self.node = node
        config = node.get("config") if isinstance(node.get("config"), dict) else {}
        initial = {"label": node.get("label") or ""}
        if data is None:
            initial.update(self.initial_from(config))
        super().__init__(data, initial=initial, **kwargs)
        self.section_errors: dict[str, list[str]] = {}
        self.setup()

    # --- What subclasses fill in ---------------------------------------------------------------

    def setup(self) -> None:
        """Choices that come from the database."""

    def initial_from(self, config: dict) -> dict:
        """Form values that show ``config``."""
        return {name: config[name] for name in self.base_fields if name in config}

    def to_config(self) -> dict:
        """The node's config from the cleaned data (call after ``is_valid()``)."""
        return {}

    def sections(self) -> list[Section]:
        rows = [self.row(name) for name in self.fields if name != "label"]
        return [Section("Settings", rows)] if rows else []

    @property
    def label_row(self) -> Row:
        return Row(self["label"])

    # --- Helpers -------------------------------------------------------------------------------

    def row(self, name: str, *, unit: str | None = None) -> Row:
        return Row(self[name], when=self.when.get(name, ""), unit=self[unit] if unit else None,
                   help=self.help_texts.get(name, ""))

    def data_for(self, *names: str) -> dict:
        """The cleaned values of ``names`` that were given (empty inputs are left out)."""
        values = {}
        for name in names:
            value = self.cleaned_data.get(name)
            if value not in (None, "", [], {}):
                values[name] = value
        return values

    def kind(self) -> str:
        return self.cleaned_data.get("kind") or ""

    # --- Problems from journeys.graph ----------------------------------------------------------

    def input_for(self, path: str) -> str | None:
        """The input a Problem's field is about: "config.branches[1].port" → "branches"."""
        if path == "label":
            return "label"
        if not path.startswith("config."):
            return None
        key = re.split(r"[.\[]", path.removeprefix("config."), maxsplit=1)[0]
        if key in self.fields:
            return key
        # A rule's own error paths are appended to the key as they come ("config.rulerules.all[0]").
        for name, form_field in self.fields.items():
            if isinstance(form_field, JSONTextField) and key.startswith(name):
                return name
        return None

    def add_problems(self, problems: list[graphs.Problem]) -> None:
        """Show this node's problems next to their inputs (the rest above the form)."""
        for problem in problems:
            target = self.input_for(problem.field)
            message = sentence(self.describe(problem))
            if target is None:
                self.add_error(None, message)
            elif target in self.fields:
                if message not in self.errors.get(target, []):
                    self.add_error(target, message)
            else:
                self.section_errors.setdefault(target, []).append(message)

    def describe(self, problem: graphs.Problem) -> str:
        """The message, with the item it is about when the field names one ("item 2: …")."""
        match = re.search(r"\[(\d+)\]", problem.field)
        if match:
            return f"item {int(match.group(1)) + 1}: {problem.message}"
        return problem.message


class TriggerForm(NodeForm):
    node_type = "trigger"
    KINDS = [
        ("event", "An event happens"),
        ("segment_entered", "A customer enters a segment"),
        ("segment_exited", "A customer leaves a segment"),
        ("date", "A date attribute comes round"),
        ("api", "A call to the API"),
    ]
    when = {"event": "kind:event", "where": "kind:event", "segment": "kind:segment_entered,segment_exited",
            "attr": "kind:date", "offset_days": "kind:date", "at": "kind:date"}
    help_texts = {
        "where": f"Optional property filters, in the rule language. Example: {WHERE_EXAMPLE}",
        "attr": "A date attribute of the customer, e.g. attributes.birthday.",
        "offset_days": "Days before (negative) or after (positive) the date.",
        "at": "In the customer's time zone.",
    }

    kind = forms.ChoiceField(label="Customers enter when", choices=[("", "Choose…"), *KINDS], required=False)
    event = forms.CharField(label="Event name", required=False, max_length=128, strip=True,
                            widget=_text(placeholder="e.g. cart_abandoned", spellcheck="false"))
    where = JSONTextField(label="Only when the event's properties match", kind=list, rows=3)
    segment = forms.TypedChoiceField(label="Segment", coerce=int, required=False, empty_value=None)
    attr = forms.CharField(label="Date attribute", required=False, max_length=80, strip=True,
                           widget=_text(placeholder="attributes.birthday", spellcheck="false"))
    offset_days = forms.IntegerField(label="Days from the date", required=False)
    at = forms.TimeField(label="At", required=False, widget=TIME_WIDGET)

    def setup(self):
        self.fields["segment"].choices = [("", "Choose a segment…")] + [
            (segment.pk, segment.name) for segment in Segment.objects.order_by("name")
        ]

    def to_config(self) -> dict:
        kind = self.kind()
        config: dict = {"kind": kind} if kind else {}
        if kind == "event":
            config.update(self.data_for("event", "where"))
        elif kind in ("segment_entered", "segment_exited"):
            config.update(self.data_for("segment"))
        elif kind == "date":
            config.update(self.data_for("attr", "offset_days"))
            if self.cleaned_data.get("at"):
                config["at"] = self.cleaned_data["at"].strftime("%H:%M")
        return config


class SendForm(NodeForm):
    node_type = "send"
    topic = forms.ChoiceField(label="Topic", required=False,
                              help_text="Marketing topics need the customer's subscription on the channel.")
    channel = forms.ChoiceField(label="Channel", required=False, choices=[
        ("", "Choose…"), ("preferred", "The customer's preferred channel"), *CHANNEL_CHOICES,
    ])

    def setup(self):
        self.fields["topic"].choices = [("", "Choose a topic…")] + [
            (topic.key, topic.name) for topic in Topic.objects.order_by("is_transactional", "name")
        ]
        for channel, specs in CONTENT_INPUTS.items():
            for spec in specs:
                if spec.kind == "text":
                    widget = _text(**({"placeholder": spec.placeholder} if spec.placeholder else {}))
                else:
                    code = {"class": "mono", "spellcheck": "false"} if spec.kind == "code" else {}
                    widget = forms.Textarea(attrs={"rows": spec.rows, **code})
                self.fields[self.content_name(channel, spec.name)] = forms.CharField(
                    label=spec.label, required=False, strip=spec.name != "html", max_length=100_000, widget=widget,
                )

    @staticmethod
    def content_name(channel: str, name: str) -> str:
        return f"{CONTENT_KEY}-{channel}-{name}"

    def initial_from(self, config: dict) -> dict:
        initial = {name: config.get(name) for name in ("topic", "channel") if config.get(name)}
        content = config.get("content") if isinstance(config.get("content"), dict) else {}
        for channel, body in content.items():
            if channel not in CONTENT_INPUTS or not isinstance(body, dict):
                continue
            for spec in CONTENT_INPUTS[channel]:
                value = body.get(spec.name, "")
                initial[self.content_name(channel, spec.name)] = (
                    variables_text(value) if spec.name == "variables" else value
                )
        return initial

    def clean(self):
        data = super().clean()
        name = self.content_name("whatsapp", "variables")
        try:
            content_body(self.data, CONTENT_KEY, "whatsapp")
        except ValueError as exc:
            self.add_error(name, str(exc))
        return data

    def written_channels(self) -> list[str]:
        """Channels with any content typed in (and the chosen channel, so it is checked)."""
        chosen = self.cleaned_data.get("channel") if hasattr(self, "cleaned_data") else self.data.get("channel")
        channels = []
        for channel, specs in CONTENT_INPUTS.items():
            typed = any(str(self.data.get(self.content_name(channel, spec.name)) or "").strip() for spec in specs)
            if typed or channel == chosen:
                channels.append(channel)
        return channels

    def to_config(self) -> dict:
        config = self.data_for("topic", "channel")
        content = {channel: content_body(self.data, CONTENT_KEY, channel) for channel in self.written_channels()}
        if content:
            config["content"] = content
        return config

    def input_for(self, path: str) -> str | None:
        match = re.fullmatch(r"config\.content\.(\w+)(?:\.(\w+).*)?", path)
        if match:
            channel, name = match.groups()
            if channel not in CONTENT_INPUTS:
                return "content"
            known = {spec.name for spec in CONTENT_INPUTS[channel]}
            return self.content_name(channel, name) if name in known else channel
        if path == "config.content":
            return "content"
        return super().input_for(path)

    def sections(self) -> list[Section]:
        sections = [Section("Message", [self.row("topic"), self.row("channel")])]
        chosen = self["channel"].value()
        written = set(self.written_channels()) if self.is_bound else set(
            (self.node.get("config") or {}).get("content") or {}
        )
        for channel, label in CHANNEL_CHOICES:
            rows = []
            for spec in CONTENT_INPUTS[channel]:
                rows.append(Row(self[self.content_name(channel, spec.name)], help=spec.help))
            errors = self.section_errors.get(channel, [])
            has_errors = bool(errors) or any(row.field.errors for row in rows)
            sections.append(Section(
                f"{label} content", rows, errors=errors, collapsible=True,
                open=channel in written or channel == chosen or has_errors,
            ))
        if self.section_errors.get("content"):
            sections[0].errors.extend(self.section_errors["content"])
        return sections


class WaitForm(NodeForm):
    node_type = "wait"
    KINDS = [
        ("duration", "For a while"),
        ("time_of_day", "Until a time of day"),
        ("date_attr", "Until a date attribute"),
        ("event", "Until an event (with a timeout)"),
    ]
    when = {"minutes": "kind:duration", "at": "kind:time_of_day,date_attr", "weekdays": "kind:time_of_day",
            "attr": "kind:date_attr", "offset_days": "kind:date_attr", "event": "kind:event", "match": "kind:event",
            "timeout_minutes": "kind:event"}
    help_texts = {
        "at": "In the customer's time zone.",
        "weekdays": "Leave all unticked for any day.",
        "attr": "e.g. attributes.renewal_date",
        "match": "Optional: only an event whose property has the same value as the entry event's (e.g. cart_id).",
        "timeout_minutes": "Customers leave by the timeout port when the event has not come by then.",
    }

    kind = forms.ChoiceField(label="Wait", choices=[("", "Choose…"), *KINDS], required=False)
    minutes = forms.IntegerField(label="How long", required=False, min_value=1)
    minutes_unit = forms.ChoiceField(label="Unit", choices=UNITS, initial="minutes", required=False)
    at = forms.TimeField(label="At", required=False, widget=TIME_WIDGET)
    weekdays = forms.TypedMultipleChoiceField(label="On", coerce=int, choices=WEEKDAYS, required=False,
                                              widget=forms.CheckboxSelectMultiple)
    attr = forms.CharField(label="Date attribute", required=False, max_length=80, strip=True,
                           widget=_text(spellcheck="false"))
    offset_days = forms.IntegerField(label="Days from the date", required=False)
    event = forms.CharField(label="Event name", required=False, max_length=128, strip=True,
                            widget=_text(placeholder="e.g. order_completed", spellcheck="false"))
    match = forms.CharField(label="Same value of the entry event's property", required=False, max_length=128,
                            strip=True, widget=_text(placeholder="e.g. cart_id", spellcheck="false"))
    timeout_minutes = forms.IntegerField(label="Give up after", required=False, min_value=1)
    timeout_unit = forms.ChoiceField(label="Unit", choices=UNITS, initial="hours", required=False)

    def initial_from(self, config: dict) -> dict:
        initial = super().initial_from(config)
        initial["minutes"], initial["minutes_unit"] = split_minutes(config.get("minutes"))
        initial["timeout_minutes"], initial["timeout_unit"] = split_minutes(config.get("timeout_minutes"))
        return initial

    def minutes_of(self, name: str, unit: str) -> int | None:
        amount = self.cleaned_data.get(name)
        if amount is None:
            return None
        return amount * UNIT_MINUTES.get(self.cleaned_data.get(unit) or "minutes", 1)

    def to_config(self) -> dict:
        kind = self.kind()
        config: dict = {"kind": kind} if kind else {}
        at = self.cleaned_data.get("at")
        if kind == "duration":
            minutes = self.minutes_of("minutes", "minutes_unit")
            if minutes is not None:
                config["minutes"] = minutes
        elif kind == "time_of_day":
            if at:
                config["at"] = at.strftime("%H:%M")
            config.update(self.data_for("weekdays"))
        elif kind == "date_attr":
            config.update(self.data_for("attr", "offset_days"))
            if at:
                config["at"] = at.strftime("%H:%M")
        elif kind == "event":
            config.update(self.data_for("event", "match"))
            timeout = self.minutes_of("timeout_minutes", "timeout_unit")
            if timeout is not None:
                config["timeout_minutes"] = timeout
        return config

    def sections(self) -> list[Section]:
        names = ["kind", "minutes", "at", "weekdays", "attr", "offset_days", "event", "match", "timeout_minutes"]
        units = {"minutes": "minutes_unit", "timeout_minutes": "timeout_unit"}
        return [Section("Settings", [self.row(name, unit=units.get(name)) for name in names])]


class ConditionForm(NodeForm):
    node_type = "condition"
    help_texts = {
        "rule": "The segment rule language, checked for the customer when they arrive; empty to use only the "
                f"context conditions. Example: {RULE_EXAMPLE}",
        "context": "Conditions on the journey's own context: the entry event's properties (entry.…) and what "
                   f"webhooks stored. Example: {CONTEXT_EXAMPLE}",
    }
    rule = JSONTextField(label="Rule", kind=dict, rows=6)
    context = JSONTextField(label="Context conditions", kind=list, rows=3)

    def to_config(self) -> dict:
        return self.data_for("rule", "context")


class SplitForm(NodeForm):
    node_type = "split"
    help_texts = {
        "branches": "One branch per line as name=weight, e.g. a=50. The names become the node's ports "
                    "(lower-case letters, digits, '_' or '-').",
        "holdout": "Percent of customers kept out, who leave by the holdout port.",
    }
    branches = forms.CharField(label="Branches", required=False, strip=True,
                               widget=forms.Textarea(attrs={"rows": 3, "class": "mono", "spellcheck": "false"}))
    holdout = forms.IntegerField(label="Holdout (%)", required=False)

    def initial_from(self, config: dict) -> dict:
        branches = config.get("branches") if isinstance(config.get("branches"), list) else []
        lines = [f"{b.get('port', '')}={b.get('weight', '')}" for b in branches if isinstance(b, dict)]
        return {"branches": "\n".join(lines), "holdout": config.get("holdout")}

    def clean_branches(self):
        branches = []
        for number, line in enumerate(self.cleaned_data.get("branches", "").splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, weight = line.partition("=")
            if not sep:
                raise forms.ValidationError(f"Line {number} is not name=weight.")
            try:
                weight_value = int(weight.strip())
            except ValueError:
                raise forms.ValidationError(f"Line {number}: the weight must be a whole number.") from None
            branches.append({"port": name.strip(), "weight": weight_value})
        return branches

    def to_config(self) -> dict:
        config: dict = {"branches": self.cleaned_data.get("branches") or []}
        if self.cleaned_data.get("holdout") is not None:
            config["holdout"] = self.cleaned_data["holdout"]
        return config

    def describe(self, problem):
        match = re.search(r"\[(\d+)\]", problem.field)
        if match:
            return f"line {int(match.group(1)) + 1}: {problem.message}"
        return problem.message


class NbaForm(NodeForm):
    node_type = "nba"
    help_texts = {
        "actions": "Each chosen action becomes a port; customers with no eligible action leave by \"none\".",
        "holdout": "Percent of customers kept out (no action), to measure the difference the actions make.",
    }
    actions = forms.MultipleChoiceField(label="Actions from the catalog", required=False,
                                        widget=forms.CheckboxSelectMultiple)
    holdout = forms.IntegerField(label="Holdout (%)", required=False)

    def setup(self):
        active = list(Action.objects.filter(active=True).order_by("key").values_list("key", "name"))
        keys = {key for key, _ in active}
        chosen = (self.node.get("config") or {}).get("actions") or []
        # Keep an action the node already names in the list, so the problem about it can be seen.
        gone = [(key, f"{key} (not an active action)") for key in chosen if isinstance(key, str) and key not in keys]
        self.fields["actions"].choices = [(key, f"{name} ({key})") for key, name in active] + gone

    def to_config(self) -> dict:
        order = [key for key, _ in self.fields["actions"].choices]
        chosen = set(self.cleaned_data.get("actions") or [])
        config: dict = {"actions": [key for key in order if key in chosen]}
        if self.cleaned_data.get("holdout") is not None:
            config["holdout"] = self.cleaned_data["holdout"]
        return config


class UpdateForm(NodeForm):
    node_type = "update"
    KINDS = [
        ("attribute", "Set an attribute"),
        ("lifecycle_stage", "Set the lifecycle stage"),
        ("subscription", "Change a subscription"),
    ]
    when = {"key": "kind:attribute", "value": "kind:attribute,lifecycle_stage", "topic": "kind:subscription",
            "channel": "kind:subscription", "subscribed": "kind:subscription"}
    help_texts = {"value": "For an attribute, numbers, true and false are stored as such; anything else as text."}

    kind = forms.ChoiceField(label="Update", choices=[("", "Choose…"), *KINDS], required=False)
    key = forms.CharField(label="Attribute", required=False, max_length=64, strip=True,
                          widget=_text(placeholder="e.g. plan", spellcheck="false"))
    value = forms.CharField(label="Value", required=False, max_length=1000, strip=True)
    topic = forms.ChoiceField(label="Topic", required=False)
    channel = forms.ChoiceField(label="Channel", required=False, choices=[("", "Choose…"), *CHANNEL_CHOICES])
    subscribed = forms.TypedChoiceField(
        label="Make it", required=False, empty_value=None, coerce=lambda value: value == "true",
        choices=[("", "Choose…"), ("true", "Subscribed"), ("false", "Unsubscribed")],
    )

    def setup(self):
        self.fields["topic"].choices = [("", "Choose a topic…")] + [
            (topic.key, topic.name) for topic in Topic.objects.order_by("is_transactional", "name")
        ]

    def initial_from(self, config: dict) -> dict:
        initial = super().initial_from(config)
        value = config.get("value")
        if value is not None and not isinstance(value, str):
            initial["value"] = json.dumps(value, ensure_ascii=False)
        if isinstance(config.get("subscribed"), bool):
            initial["subscribed"] = "true" if config["subscribed"] else "false"
        return initial

    @staticmethod
    def typed(text: str):
        """Numbers, true, false and null as themselves; anything else as text."""
        if text in ("true", "false", "null") or re.fullmatch(r"-?\d+(\.\d+)?", text):
            return json.loads(text)
        return text

    def to_config(self) -> dict:
        kind = self.kind()
        config: dict = {"kind": kind} if kind else {}
        value = self.cleaned_data.get("value", "")
        if kind == "attribute":
            config.update(self.data_for("key"))
            if "value" in self.data:
                config["value"] = self.typed(value)
        elif kind == "lifecycle_stage":
            if value:
                config["value"] = value
        elif kind == "subscription":
            config.update(self.data_for("topic", "channel"))
            if self.cleaned_data.get("subscribed") is not None:
                config["subscribed"] = self.cleaned_data["subscribed"]
        return config


class WebhookForm(NodeForm):
    node_type = "webhook"
    help_texts = {
        "url": "The customer and the journey's context are POSTed here as JSON, signed with the shared secret.",
        "store_as": "Optional: keep the JSON answer in the journey's context under this key, for later conditions.",
    }
    url = forms.CharField(label="URL", required=False, max_length=2000, strip=True,
                          widget=_text(placeholder="https://example.com/hooks/journey", spellcheck="false"))
    store_as = forms.CharField(label="Store the answer as", required=False, max_length=64, strip=True,
                               widget=_text(spellcheck="false"))
    timeout_seconds = forms.IntegerField(label="Timeout (seconds)", required=False)
    retries = forms.IntegerField(label="Retries", required=False)

    def to_config(self) -> dict:
        return self.data_for("url", "store_as", "timeout_seconds", "retries")


class TaskForm(NodeForm):
    node_type = "task"
    help_texts = {
        "outcomes": "What the person can answer, one per line or separated by commas (e.g. called, no_answer). "
                    "Each becomes a port; \"timeout\" is added.",
    }
    title = forms.CharField(label="Task title", required=False, max_length=200, strip=True,
                            widget=_text(placeholder="e.g. Call back about the failed delivery"))
    instructions = forms.CharField(label="Instructions", required=False, max_length=5000, strip=True,
                                   widget=forms.Textarea(attrs={"rows": 3}))
    outcomes = forms.CharField(label="Outcomes", required=False, max_length=1000, strip=True,
                               widget=_text(spellcheck="false"))
    timeout_hours = forms.IntegerField(label="Timeout (hours)", required=False)

    def initial_from(self, config: dict) -> dict:
        initial = super().initial_from(config)
        if isinstance(config.get("outcomes"), list):
            initial["outcomes"] = ", ".join(str(o) for o in config["outcomes"])
        return initial

    def clean_outcomes(self):
        return [part.strip() for part in re.split(r"[,\n]", self.cleaned_data.get("outcomes", "")) if part.strip()]

    def to_config(self) -> dict:
        config = self.data_for("title", "instructions", "outcomes", "timeout_hours")
        config.setdefault("outcomes", [])
        return config


class ExitForm(NodeForm):
    node_type = "exit"


NODE_FORMS: dict[str, type[NodeForm]] = {
    form.node_type: form
    for form in (TriggerForm, SendForm, WaitForm, ConditionForm, SplitForm, NbaForm, UpdateForm, WebhookForm,
                 TaskForm, ExitForm)
}


def node_form(node: dict, data=None) -> NodeForm:
    return NODE_FORMS[node.get("type")](data, node=node)


# --- The journey's settings -----------------------------------------------------------------------


class SettingsForm(forms.Form):
    """Re-entry, the goal, exit rules and caps: ``settings`` of the graph."""

    REENTRY = [
        ("once", "Once ever"),
        ("after_exit", "Again after leaving"),
        ("per_value", "Once per value of a property"),
    ]
    GOALS = [("", "No goal"), ("event", "An event"), ("segment", "Entering a segment")]
    when = {"cooldown_hours": "reentry_mode:after_exit", "reentry_property": "reentry_mode:per_value",
            "goal_event": "goal_kind:event", "goal_segment": "goal_kind:segment"}
    help_texts = {
        "reentry_property": "e.g. cart_id: one run per cart.",
        "goal_kind": "Reaching the goal ends the journey for the customer and counts a conversion.",
        "exit_events": "Event names, separated by commas: any of them ends the journey (no conversion).",
        "exit_segments": "Leaving any of these segments ends the journey.",
        "exit_unsubscribed": "Unsubscribing from any of these topics ends the journey.",
    }

    reentry_mode = forms.ChoiceField(label="Customers may enter", choices=REENTRY, initial="once")
    cooldown_hours = forms.IntegerField(label="Not sooner than (hours after leaving)", required=False)
    reentry_property = forms.CharField(label="Property", required=False, max_length=128, strip=True,
                                       widget=_text(spellcheck="false"))
    goal_kind = forms.ChoiceField(label="Goal", choices=GOALS, required=False)
    goal_event = forms.CharField(label="Goal event", required=False, max_length=128, strip=True,
                                 widget=_text(placeholder="e.g. order_completed", spellcheck="false"))
    goal_segment = forms.TypedChoiceField(label="Goal segment", coerce=int, required=False, empty_value=None)
    exit_events = forms.CharField(label="Exit on events", required=False, max_length=2000, strip=True,
                                  widget=_text(spellcheck="false"))
    exit_segments = forms.TypedMultipleChoiceField(label="Exit on leaving segments", coerce=int, required=False,
                                                   widget=forms.CheckboxSelectMultiple)
    exit_unsubscribed = forms.MultipleChoiceField(label="Exit on unsubscribing from", required=False,
                                                  widget=forms.CheckboxSelectMultiple)
    entries_per_day = forms.IntegerField(label="Entries per day, at most", required=False)
    sends_per_customer = forms.IntegerField(label="Messages per customer, at most", required=False)

    def __init__(self, data=None, *, settings: dict, **kwargs):
        self.settings = settings if isinstance(settings, dict) else {}
        super().__init__(data, initial=None if data is not None else self.initial_from(self.settings), **kwargs)
        segments = [(segment.pk, segment.name) for segment in Segment.objects.order_by("name")]
        self.fields["goal_segment"].choices = [("", "Choose a segment…"), *segments]
        self.fields["exit_segments"].choices = segments
        self.fields["exit_unsubscribed"].choices = list(
            Topic.objects.filter(is_transactional=False).order_by("name").values_list("key", "name")
        )

    @staticmethod
    def initial_from(settings: dict) -> dict:
        reentry = settings.get("reentry") if isinstance(settings.get("reentry"), dict) else {}
        goal = settings.get("goal") if isinstance(settings.get("goal"), dict) else {}
        exits = [rule for rule in settings.get("exits") or [] if isinstance(rule, dict)]
        caps = settings.get("caps") if isinstance(settings.get("caps"), dict) else {}
        return {
            "reentry_mode": reentry.get("mode") or "once",
            "cooldown_hours": reentry.get("cooldown_hours"),
            "reentry_property": reentry.get("property", ""),
            "goal_kind": "event" if "event" in goal else "segment" if "segment" in goal else "",
            "goal_event": goal.get("event", ""),
            "goal_segment": goal.get("segment"),
            "exit_events": ", ".join(str(rule["event"]) for rule in exits if "event" in rule),
            "exit_segments": [rule["segment_left"] for rule in exits if "segment_left" in rule],
            "exit_unsubscribed": [rule["unsubscribed"] for rule in exits if "unsubscribed" in rule],
            "entries_per_day": caps.get("entries_per_day"),
            "sends_per_customer": caps.get("sends_per_customer"),
        }

    def to_settings(self) -> dict:
        data = self.cleaned_data
        mode = data.get("reentry_mode") or "once"
        reentry: dict = {"mode": mode}
        if mode == "after_exit" and data.get("cooldown_hours") is not None:
            reentry["cooldown_hours"] = data["cooldown_hours"]
        if mode == "per_value":
            reentry["property"] = data.get("reentry_property") or ""
        settings: dict = {"reentry": reentry}
        if data.get("goal_kind") == "event":
            settings["goal"] = {"event": data.get("goal_event") or ""}
        elif data.get("goal_kind") == "segment":
            settings["goal"] = {"segment": data.get("goal_segment")}
        exits = [{"event": name.strip()} for name in (data.get("exit_events") or "").split(",") if name.strip()]
        exits += [{"segment_left": segment} for segment in data.get("exit_segments") or []]
        exits += [{"unsubscribed": topic} for topic in data.get("exit_unsubscribed") or []]
        if exits:
            settings["exits"] = exits
        caps = {name: data[name] for name in ("entries_per_day", "sends_per_customer") if data.get(name) is not None}
        if caps:
            settings["caps"] = caps
        return settings

    PROBLEM_FIELDS = {
        "settings.reentry.mode": "reentry_mode",
        "settings.reentry.cooldown_hours": "cooldown_hours",
        "settings.reentry.property": "reentry_property",
        "settings.goal": "goal_kind",
        "settings.goal.event": "goal_event",
        "settings.goal.segment": "goal_segment",
        "settings.exits": "exit_events",
        "settings.caps.entries_per_day": "entries_per_day",
        "settings.caps.sends_per_customer": "sends_per_customer",
    }

    def input_for(self, path: str) -> str | None:
        if path in self.PROBLEM_FIELDS:
            return self.PROBLEM_FIELDS[path]
        match = re.fullmatch(r"settings\.exits\[\d+\](?:\.(\w+))?", path)
        if match:
            return {"segment_left": "exit_segments", "unsubscribed": "exit_unsubscribed"}.get(match.group(1) or "",
                                                                                             "exit_events")
        return None

    def add_problems(self, problems: list[graphs.Problem]) -> None:
        for problem in problems:
            target = self.input_for(problem.field)
            message = sentence(problem.message)
            if target is None:
                self.add_error(None, message)
            elif message not in self.errors.get(target, []):
                self.add_error(target, message)

    def rows(self) -> list[Row]:
        return [Row(self[name], when=self.when.get(name, ""), help=self.help_texts.get(name, "")) for name in self.fields]
