"""What each column of an import means: checked against the header, and guessed from it.

A mapping is a JSON object keyed by column name (columns left out are skipped)::

    {"Customer ID": {"to": "external_id"},
     "E-mail": {"to": "email"},
     "Plan": {"to": "attribute", "key": "plan", "type": "text"},
     "Newsletter": {"to": "subscription", "topic": "newsletter", "channel": "email"},
     "Email opt-in": {"to": "consent", "channel": "email", "source": "crm", "legal_basis": "consent",
                      "wording": "Send me news by email"},
     "Notes": {"to": "skip"}}
"""

from __future__ import annotations

import re

from core.errors import FieldError, InputError

from ..models import ChannelKind, LegalBasis, Topic
from ..schemas import ATTRIBUTE_KEY
from .models import MatchKey

PROFILE_FIELDS = ("external_id", "email", "phone", "first_name", "last_name", "locale", "timezone", "lifecycle_stage")
ATTRIBUTE_TYPES = ("text", "number", "boolean", "date")
KINDS = (*PROFILE_FIELDS, "attribute", "subscription", "consent", "skip")

# Header spellings (lower-case, letters and digits only) that name a profile field.
_FIELD_NAMES = {
    "external_id": {"externalid", "id", "customerid", "crmid", "contactid", "userid", "extid"},
    "email": {"email", "emailaddress", "mail"},
    "phone": {"phone", "phonenumber", "mobile", "mobilephone", "cell", "tel", "telephone", "sms"},
    "first_name": {"firstname", "givenname", "forename", "first"},
    "last_name": {"lastname", "surname", "familyname", "last"},
    "locale": {"locale", "language", "lang"},
    "timezone": {"timezone", "tz", "zone"},
    "lifecycle_stage": {"lifecyclestage", "stage", "lifecycle"},
}
_YES_NO = {"yes", "no", "true", "false", "1", "0", "subscribed", "unsubscribed", "y", "n"}
_CONSENT_WORDS = {"consent", "optin", "gdpr", "permission"}


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _attribute_key(name: str) -> str:
    key = re.sub(r"[^A-Za-z0-9_]+", "_", name.strip()).strip("_").lower()[:64]
    if not key or not ATTRIBUTE_KEY.fullmatch(key):
        key = f"_{key}"[:64] if key else "column"
    return key


def guess(columns: list[str], preview: list[list], topics: list[Topic]) -> dict:
    """A sensible first mapping from the header names (and the first rows' values)."""
    mapping: dict[str, dict] = {}
    used: set[str] = set()
    channels = {_squash(value): value for value in ChannelKind.values}
    for index, column in enumerate(columns):
        squashed = _squash(column)
        samples = [str(row[index]).strip().lower() for row in preview if index < len(row) and row[index]]
        field = next((f for f, names in _FIELD_NAMES.items() if squashed in names and f not in used), None)
        if field:
            mapping[column] = {"to": field}
            used.add(field)
            continue
        words = re.split(r"[^a-z0-9]+", column.lower())
        channel = next((channels[w] for w in words if w in channels), None)
        topic = next((t for t in topics if t.key in squashed or _squash(t.name) in squashed), None)
        if any(w in _CONSENT_WORDS for w in words) or "optin" in squashed:
            mapping[column] = {"to": "consent", "channel": channel or ChannelKind.EMAIL, "source": "import",
                               "legal_basis": LegalBasis.CONSENT, "wording": ""}
        elif topic is not None:
            mapping[column] = {"to": "subscription", "topic": topic.key, "channel": channel or ChannelKind.EMAIL}
        else:
            kind = "text"
            if samples and all(s in _YES_NO for s in samples):
                kind = "boolean"
            elif samples and all(re.fullmatch(r"-?\d+(\.\d+)?", s) for s in samples):
                kind = "number"
            elif samples and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", s) for s in samples):
                kind = "date"
            mapping[column] = {"to": "attribute", "key": _attribute_key(column), "type": kind}
    return mapping


def check(mapping, *, columns: list[str], match_on: str) -> dict:
    """Return ``mapping`` cleaned (every column present, skipped ones as ``{"to": "skip"}``),
    or raise :class:`InputError` naming each bad entry as ``mapping.<column>``."""
    errors: list[FieldError] = []
    if not isinstance(mapping, dict):
        raise InputError([FieldError("mapping", "must be a JSON object of column name → {\"to\": …}")])
    if match_on not in MatchKey.values:
        errors.append(FieldError("match_on", f"must be one of {', '.join(MatchKey.values)}"))
    cleaned: dict[str, dict] = {}
    seen: dict[tuple, str] = {}
    topics = set(Topic.objects.values_list("key", flat=True))
    for column, spec in mapping.items():
        where = f"mapping.{column}"
        if column not in columns:
            errors.append(FieldError(where, f"the file has no column '{column}' (its columns: {', '.join(columns)})"))
            continue
        if isinstance(spec, str):
            spec = {"to": spec}
        if not isinstance(spec, dict) or spec.get("to") not in KINDS:
            errors.append(FieldError(where, f"'to' must be one of {', '.join(KINDS)}"))
            continue
        kind = spec["to"]
        item: dict = {"to": kind}
        if kind in PROFILE_FIELDS:
            identity = ("field", kind)
        elif kind == "attribute":
            key, type_ = str(spec.get("key") or ""), spec.get("type", "text")
            if not ATTRIBUTE_KEY.fullmatch(key):
                errors.append(FieldError(where, "the attribute key must start with a letter or underscore and hold "
                                                "only letters, digits and underscores (at most 64)"))
                continue
            if type_ not in ATTRIBUTE_TYPES:
                errors.append(FieldError(where, f"the attribute type must be one of {', '.join(ATTRIBUTE_TYPES)}"))
                continue
            item.update(key=key, type=type_)
            identity = ("attribute", key)
        elif kind == "subscription":
            topic, channel = spec.get("topic"), spec.get("channel")
            if topic not in topics:
                known = ", ".join(sorted(topics)) or "none yet"
                errors.append(FieldError(where, f"unknown topic '{topic}' (known topics: {known})"))
                continue
            if channel not in ChannelKind.values:
                errors.append(FieldError(where, f"the channel must be one of {', '.join(ChannelKind.values)}"))
                continue
            item.update(topic=topic, channel=channel)
            identity = ("subscription", topic, channel)
        elif kind == "consent":
            channel, source = spec.get("channel"), str(spec.get("source") or "").strip()
            basis, wording = spec.get("legal_basis") or LegalBasis.CONSENT, str(spec.get("wording") or "").strip()
            if channel not in ChannelKind.values:
                errors.append(FieldError(where, f"the channel must be one of {', '.join(ChannelKind.values)}"))
                continue
            if not source or len(source) > 64 or "\x00" in source:
                errors.append(FieldError(where, "say where the consent was given (source, at most 64 characters)"))
                continue
            if basis not in LegalBasis.values:
                errors.append(FieldError(where, f"the legal basis must be one of {', '.join(LegalBasis.values)}"))
                continue
            if "\x00" in wording or len(wording) > 5000:
                errors.append(FieldError(where, "the wording must be text of at most 5,000 characters"))
                continue
            item.update(channel=channel, source=source, legal_basis=basis, wording=wording)
            identity = ("consent", channel)
        else:
            identity = None
        if identity is not None:
            if identity in seen:
                errors.append(FieldError(where, f"column '{seen[identity]}' is already mapped to the same target"))
                continue
            seen[identity] = column
        cleaned[column] = item
    if match_on in MatchKey.values and ("field", match_on) not in seen and not errors:
        errors.append(FieldError("match_on", f"customers are matched by {match_on}, but no column is mapped to it"))
    if errors:
        raise InputError(errors)
    return {column: cleaned.get(column, {"to": "skip"}) for column in columns}
