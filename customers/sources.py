"""The Segment-compatible source API: /v1/batch, identify, track, page, screen, group, alias.

Segment's and RudderStack's SDKs send here when only their host and write key change. A
request is authenticated by a source write key (an ``ApiKey`` of the ``source`` scope) as
the HTTP basic-auth user name, or, as analytics.js may send it, as ``writeKey`` in the
body. Bodies may be gzipped and may come as ``text/plain`` (analytics.js posts that way to
avoid a CORS preflight). Every message is validated before anything is written: one bad
message refuses the whole request (HTTP 400, naming its index and field). What the SDKs
expect back is Segment's ``200 {"success": true}``.

analytics.js (analytics-next) also reads its settings from
``<cdnURL>/v1/projects/<writeKey>/settings`` and posts to short paths on its ``apiHost``
(``/t``, ``/i``, ``/p``, ``/s``, ``/g``, ``/a``, and ``/b`` for a batch): served here too.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from datetime import UTC, datetime

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from core.errors import FieldError, InputError

from .auth import write_key_check
from .models import PLATFORM_PREFIXES
from .schemas import ATTRIBUTE_KEY, LOCALE
from .services.sources import SourceMessage, source_messages_ingest
from .validation import (
    EVENT_AHEAD,
    InvalidValue,
    check_moment,
    format_path,
    normalize_email,
    normalize_phone,
    normalize_timezone,
    unstorable,
)

KINDS = ("identify", "track", "page", "screen", "group", "alias")
# analytics.js posts each call to the first letter of its type.
SHORT_PATHS = {kind[0]: kind for kind in KINDS}
ID_LIMIT = 255

NO_KEY_MESSAGE = (
    "Missing or invalid API key: send a source write key as the HTTP basic-auth user name (password empty), "
    "or as writeKey in the body. Create one with 'python manage.py create_api_key NAME --scope source' "
    "or in Django admin; JSON API keys are not accepted here."
)


class Refused(Exception):
    """A request answered with an error; ``errors`` name the fields."""

    def __init__(self, status: int, message: str, errors: list[FieldError] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


def _body_limit() -> int:
    # The same limit as the JSON API's (Django's), on the body as received and as unzipped.
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


# --- Responses -------------------------------------------------------------------------------


def _cors(response: HttpResponse, request) -> HttpResponse:
    """Browsers post from customers' own sites; the write key, not a cookie, authenticates,
    so any origin may call."""
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response["Access-Control-Allow-Headers"] = request.headers.get(
        "Access-Control-Request-Headers", "Authorization, Content-Type, Content-Encoding"
    )[:1000]
    response["Access-Control-Max-Age"] = "86400"
    return response


def _error(request, status: int, message: str, errors: list[FieldError] | None = None) -> HttpResponse:
    body = {"success": False, "message": message, "errors": [error.as_dict() for error in errors or []]}
    return _cors(JsonResponse(body, status=status), request)


def _preflight(request, methods: str) -> HttpResponse:
    response = _cors(HttpResponse(status=204), request)
    response["Access-Control-Allow-Methods"] = methods
    response["Allow"] = methods
    return response


# --- Reading a request ------------------------------------------------------------------------


def _header_key(request) -> str | None:
    """The write key from ``Authorization: Basic base64(key:)``; None when there is no header."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""
    return decoded.partition(":")[0]


def _read_body(request) -> bytes:
    limit = _body_limit()
    too_big = Refused(
        413,
        f"The request body is too large: at most {limit // (1024 * 1024)} MB, after gzip decompression; "
        f"send at most {settings.API_MAX_BATCH:,} messages per batch.",
        [FieldError("body", "too large")],
    )
    try:
        if int(request.headers.get("Content-Length") or 0) > limit:
            raise too_big
    except ValueError:
        raise Refused(400, "The Content-Length header is not a number.", [FieldError("body", "bad length")]) from None
    data = request.read(limit + 1)
    if len(data) > limit:
        raise too_big
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise Refused(415, f"Content-Encoding '{encoding[:40]}' is not supported; send gzip or no encoding.",
                      [FieldError("body", "unsupported encoding")])
    # Unzip at most one byte past the limit: a small body that expands without end (a
    # "zip bomb") is refused without ever being held in memory.
    inflater = zlib.decompressobj(wbits=47 if encoding != "deflate" else 15)
    try:
        plain = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise Refused(400, "The body is not valid gzip data.", [FieldError("body", "not valid gzip")]) from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise too_big
    if not inflater.eof:
        raise Refused(400, "The gzip body is truncated.", [FieldError("body", "truncated gzip data")])
    return plain


def _parse(data: bytes) -> dict:
    try:
        body = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(
            400, "The request body is not valid JSON; send a JSON object (application/json or text/plain).",
            [FieldError("body", "not valid JSON")],
        ) from None
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.", [FieldError("body", "not an object")])
    return body


def _authenticate(raw):
    """The write key ``raw`` names, or :class:`Refused` with a 401."""
    key = write_key_check(raw) if isinstance(raw, str) else None
    if key is None:
        raise Refused(401, NO_KEY_MESSAGE)
    return key


# --- Validating messages ------------------------------------------------------------------------


class _Checker:
    """Validates one message, collecting every problem as a FieldError with its index."""

    def __init__(self, index: int | None, errors: list[FieldError]):
        self.index = index
        self.errors = errors

    def fail(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field, message, self.index))

    def ident(self, message: dict, name: str) -> str | None:
        value = message.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.fail(name, f"{name} must be a string")
            return None
        value = str(value).strip()
        if not value or len(value) > ID_LIMIT:
            self.fail(name, f"{name} must be 1 to {ID_LIMIT} characters")
            return None
        return value

    def obj(self, message: dict, name: str) -> dict:
        value = message.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(name, f"{name} must be a JSON object")
            return {}
        return value

    def text(self, value, field: str, limit: int) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(field, "must be a string")
            return None
        value = value.strip()
        if len(value) > limit:
            self.fail(field, f"must be at most {limit} characters")
            return None
        return value

    def moment(self, value, field: str) -> datetime | None:
        if value is None or value == "":
            return None
        try:
            if not isinstance(value, str) or len(value) > 64:
                raise ValueError
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.astimezone(UTC)
        except (ValueError, OverflowError):
            self.fail(field, "must be an ISO 8601 timestamp such as 2024-05-01T12:00:00Z")
            return None

    def normalised(self, function, value, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(field, "must be a string")
            return None
        try:
            return function(value) or None
        except InvalidValue as exc:
            self.fail(field, str(exc))
            return None


def _occurred_at(check: _Checker, message: dict, batch_sent_at, now: datetime) -> datetime | None:
    """When it happened, corrected for the sender's clock as Segment does:
    ``receivedAt − (sentAt − timestamp)``; without a timestamp, when it was received."""
    timestamp = check.moment(message.get("timestamp"), "timestamp")
    if timestamp is None and message.get("timestamp") in (None, ""):
        timestamp = check.moment(message.get("originalTimestamp"), "originalTimestamp")
    sent_at = check.moment(message.get("sentAt"), "sentAt") if message.get("sentAt") not in (None, "") else batch_sent_at
    if timestamp is None:
        return now
    try:
        occurred = now - (sent_at - timestamp) if sent_at is not None else timestamp
        return check_moment(occurred, ahead=EVENT_AHEAD, what="the timestamp (corrected for the sender's clock)")
    except OverflowError:
        check.fail("timestamp", "is out of range; check the date and the clock of the sender")
    except InvalidValue as exc:
        check.fail("timestamp", str(exc))
    return None


NAME_TRAITS = {"firstName": "first_name", "first_name": "first_name", "lastName": "last_name", "last_name": "last_name"}


def _profile_from_traits(check: _Checker, traits: dict, context_traits: dict) -> dict:
    """Traits as profile fields (CustomerInput names) and attributes for the rest.

    RudderStack's SDKs send an identify's traits as ``context.traits``, Segment's at the top
    (and some both): the top-level ones win."""
    profile: dict = {}
    attributes: dict = {}
    where = {key: "context.traits" for key in context_traits} | {key: "traits" for key in traits}
    traits = {**context_traits, **traits}
    for key, value in traits.items():
        field = f"{where[key]}.{key}"
        if key == "email":
            if (email := check.normalised(normalize_email, value, field)) is not None:
                profile["email"] = email
        elif key == "phone":
            if (phone := check.normalised(normalize_phone, value, field)) is not None:
                profile["phone"] = phone
        elif key == "timezone":
            if (zone := check.normalised(normalize_timezone, value, field)) is not None:
                profile["timezone"] = zone
        elif key == "locale":
            locale = check.text(value, field, 35)
            if locale and not LOCALE.fullmatch(locale):
                check.fail(field, f"'{locale}' is not a locale such as en, en-GB or pt_BR")
            elif locale:
                profile["locale"] = locale
        elif key in NAME_TRAITS:
            if (name := check.text(value, field, 150)) is not None:
                profile[NAME_TRAITS[key]] = name
        elif key == "name":
            continue  # below, once first and last names are known
        elif not isinstance(key, str) or not ATTRIBUTE_KEY.fullmatch(key):
            check.fail(field, "trait names must start with a letter or underscore and contain only letters, "
                              "digits and underscores (at most 64)")
        else:
            attributes[key] = value
    name = check.text(traits.get("name"), f"{where.get('name', 'traits')}.name", 301)
    if name and "first_name" not in profile and "last_name" not in profile:
        first, _, last = name.partition(" ")
        if len(first) > 150 or len(last.strip()) > 150:
            check.fail("traits.name", "each part of the name must be at most 150 characters")
        else:
            profile["first_name"], profile["last_name"] = first, last.strip()
    if attributes:
        profile["attributes"] = attributes
    return profile


def _message(check: _Checker, message, kind: str | None, *, context: dict, sent_at, now) -> SourceMessage | None:
    if not isinstance(message, dict):
        check.fail("body" if check.index is None else "message", "each message must be a JSON object")
        return None
    errors_before = len(check.errors)
    if kind is None:
        kind = message.get("type")
        if kind not in KINDS:
            check.fail("type", f"type must be one of {', '.join(KINDS)}")
            return None
    user_id = check.ident(message, "userId")
    anonymous_id = check.ident(message, "anonymousId")
    message_id = check.ident(message, "messageId")
    result = SourceMessage(index=check.index or 0, kind=kind, user_id=user_id, anonymous_id=anonymous_id,
                           message_id=message_id)
    if kind == "alias":
        result.previous_id = check.ident(message, "previousId")
        if result.user_id is None and "userId" not in {e.field for e in check.errors[errors_before:]}:
            check.fail("userId", "an alias needs the userId the visitor now has")
        if result.previous_id is None and "previousId" not in {e.field for e in check.errors[errors_before:]}:
            check.fail("previousId", "an alias needs the previousId (the anonymousId) to link")
    elif user_id is None and anonymous_id is None and not check.errors[errors_before:]:
        check.fail("userId", "send userId or anonymousId, so the person can be found again")
    merged_context = {**context, **check.obj(message, "context")}
    properties = check.obj(message, "properties")
    traits = check.obj(message, "traits")
    result.occurred_at = _occurred_at(check, message, sent_at, now)
    if kind == "identify":
        context_traits = merged_context.get("traits")
        result.profile = _profile_from_traits(check, traits, context_traits if isinstance(context_traits, dict) else {})
    elif kind == "group":
        group_id = check.ident(message, "groupId")
        if group_id is None:
            check.fail("groupId", "a group call needs the groupId")
        result.profile = {"attributes": {"group_id": group_id, "group": traits}}
    elif kind == "track":
        name = check.text(message.get("event"), "event", 128)
        if not name:
            if name == "" or message.get("event") is None:
                check.fail("event", "a track call needs the event name, 1 to 128 characters")
        elif any(name.startswith(prefix) for prefix in PLATFORM_PREFIXES):
            check.fail("event", "event names starting with "
                                f"'{next(p for p in PLATFORM_PREFIXES if name.startswith(p))}' are reserved "
                                "for events Switchboard records itself")
        result.event = name
        result.properties = dict(properties)
    elif kind in ("page", "screen"):
        result.event = "page_viewed" if kind == "page" else "screen_viewed"
        result.properties = dict(properties)
        for key in ("name", "category"):
            value = check.text(message.get(key), key, 255)
            if value:
                result.properties[key] = value
    if result.event and merged_context:
        result.properties["context"] = merged_context
    if check.errors[errors_before:]:
        return None
    return result


def _messages(body: dict, kind: str | None) -> list[SourceMessage]:
    """Every message of the request, validated; :class:`Refused` naming each bad field."""
    now = timezone.now()
    errors: list[FieldError] = []
    top = _Checker(None, errors)
    context = top.obj(body, "context")
    sent_at = top.moment(body.get("sentAt"), "sentAt")
    if kind is None:
        batch = body.get("batch")
        if not isinstance(batch, list) or not 1 <= len(batch) <= settings.API_MAX_BATCH:
            errors.append(FieldError("batch", f"batch must be a list of 1 to {settings.API_MAX_BATCH:,} messages"))
            raise Refused(400, "The request was not accepted; nothing was written.", errors)
        messages = [_message(_Checker(i, errors), item, None, context=context, sent_at=sent_at, now=now)
                    for i, item in enumerate(batch)]
    else:
        messages = [_message(top, body, kind, context={}, sent_at=None, now=now)]
    if errors:
        raise Refused(400, "The request was not accepted; nothing was written.", errors)
    return messages


def _unstorable_errors(body: dict, batch: bool) -> list[FieldError]:
    errors = []
    for where, message in unstorable(body):
        if batch and len(where) >= 2 and where[0] == "batch" and isinstance(where[1], int):
            errors.append(FieldError(format_path(where[2:]) or "body", message, where[1]))
        else:
            errors.append(FieldError(format_path(where) or "body", message))
    return errors


# --- Views ----------------------------------------------------------------------------------


def _handle(request, kind: str | None) -> HttpResponse:
    if request.method == "OPTIONS":
        return _preflight(request, "POST, OPTIONS")
    if request.method != "POST":
        response = _error(request, 405, "Send messages with POST.")
        response["Allow"] = "POST, OPTIONS"
        return response
    try:
        header_key = _header_key(request)
        # A key in the header is checked before the body is read; analytics.js may send it
        # inside the body instead.
        key = _authenticate(header_key) if header_key is not None else None
        body = _parse(_read_body(request))
        if key is None:
            key = _authenticate(body.get("writeKey"))
        problems = _unstorable_errors(body, batch=kind is None)
        if problems:
            raise Refused(400, "The request was not accepted; nothing was written.", problems)
        messages = _messages(body, kind)
        source_messages_ingest(messages=messages, key=key)
    except Refused as exc:
        return _error(request, exc.status, exc.message, exc.errors)
    except InputError as exc:
        for error in exc.errors:
            if kind is not None:
                error.index = None
        return _error(request, 400, exc.message, exc.errors)
    return _cors(JsonResponse({"success": True}), request)


@csrf_exempt  # called by SDKs with a write key, never with a session
def batch(request) -> HttpResponse:
    """``POST /v1/batch`` (also ``/v1/b`` and ``/v1/import``): ``{"batch": [...], "sentAt", "context"}``."""
    return _handle(request, None)


@csrf_exempt
def message(request, kind: str) -> HttpResponse:
    """``POST /v1/<type>`` (or analytics.js's ``/v1/<first letter>``): one message."""
    kind = SHORT_PATHS.get(kind, kind)
    if kind not in KINDS:
        return _error(request, 404, f"No source API endpoint at {request.path[:200]}; send to /v1/batch or "
                                    f"/v1/<type> with a type of {', '.join(KINDS)}.")
    return _handle(request, kind)


@csrf_exempt
def project_settings(request, write_key: str) -> HttpResponse:
    """``GET /v1/projects/<writeKey>/settings``: the settings analytics.js loads from its
    ``cdnURL`` before it sends anything: only the Segment.io destination, pointed here."""
    if request.method == "OPTIONS":
        return _preflight(request, "GET, OPTIONS")
    if write_key_check(write_key) is None:
        return _error(request, 401, NO_KEY_MESSAGE)
    if request.method not in ("GET", "HEAD"):
        response = _error(request, 405, "Read the settings with GET.")
        response["Allow"] = "GET, OPTIONS"
        return response
    host = request.get_host()
    document = {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/v1",
                "protocol": "https" if request.is_secure() else "http",
                "unbundledIntegrations": [],
                "addBundledMetadata": False,
            }
        },
        "plan": {"track": {"__default": {"enabled": True, "integrations": {}}}, "identify": {}, "group": {}},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "remotePlugins": [],
    }
    response = _cors(JsonResponse(document), request)
    # The SDK caches it in the browser for a while; a revoked key stops at the next load.
    response["Cache-Control"] = "public, max-age=300"
    return response

