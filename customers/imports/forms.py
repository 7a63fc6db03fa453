"""The upload form, and the mapping form's fields read back into a mapping."""

from __future__ import annotations

from django import forms

from ..models import ChannelKind, LegalBasis, Topic
from .mapping import ATTRIBUTE_TYPES, PROFILE_FIELDS
from .models import MatchKey


class UploadForm(forms.Form):
    file = forms.FileField(label="CSV file", help_text="UTF-8, with a header line naming the columns.")


def choices(topics: list[Topic]) -> list[tuple[str, list[tuple[str, str]]]]:
    """What a column can be mapped to, grouped for the select."""
    return [
        ("", [("skip", "Skip this column")]),
        ("Profile", [(f"field:{name}", name.replace("_", " ").capitalize()) for name in PROFILE_FIELDS]),
        ("Attribute", [(f"attribute:{kind}", f"Attribute ({kind})") for kind in ATTRIBUTE_TYPES]),
        ("Subscription", [(f"subscription:{topic.key}:{channel}", f"{topic.name} by {label}")
                          for topic in topics if not topic.is_transactional for channel, label in ChannelKind.choices]),
        ("Consent", [(f"consent:{channel}", f"Consent for {label}") for channel, label in ChannelKind.choices]),
    ]


def choice_of(spec: dict) -> str:
    kind = spec.get("to", "skip")
    if kind in PROFILE_FIELDS:
        return f"field:{kind}"
    if kind == "attribute":
        return f"attribute:{spec.get('type', 'text')}"
    if kind == "subscription":
        return f"subscription:{spec.get('topic')}:{spec.get('channel')}"
    if kind == "consent":
        return f"consent:{spec.get('channel')}"
    return "skip"


def mapping_from_post(data, columns: list[str]) -> dict:
    """The mapping the form's fields describe (``col-<n>-to`` and the details of each kind)."""
    result: dict[str, dict] = {}
    for index, column in enumerate(columns):
        prefix = f"col-{index}-"
        choice = data.get(prefix + "to", "skip")
        kind, _, rest = choice.partition(":")
        if kind == "field":
            result[column] = {"to": rest}
        elif kind == "attribute":
            result[column] = {"to": "attribute", "type": rest, "key": data.get(prefix + "key", "").strip()}
        elif kind == "subscription":
            topic, _, channel = rest.partition(":")
            result[column] = {"to": "subscription", "topic": topic, "channel": channel}
        elif kind == "consent":
            result[column] = {"to": "consent", "channel": rest, "source": data.get(prefix + "source", ""),
                              "legal_basis": data.get(prefix + "legal_basis", ""),
                              "wording": data.get(prefix + "wording", "")}
        else:
            result[column] = {"to": "skip"}
    return result


MATCH_CHOICES = MatchKey.choices
LEGAL_BASES = LegalBasis.choices
