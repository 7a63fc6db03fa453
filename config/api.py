"""The JSON API: /api/v1/…, described by OpenAPI and browsable at /api/docs.

Every error is JSON: ``{"message": "...", "errors": [{"index", "field", "message"}]}``,
with ``index`` set for items of batch requests.
"""

import json
import logging

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser

from customers.auth import ApiKeyAuth
from core.errors import InputError
from customers.validation import unstorable

logger = logging.getLogger(__name__)

BATCH_FIELDS = {"events", "customers"}

class StorableInputParser(Parser):
    """Reads request bodies and query strings, refusing what the database cannot store.

    Every text and JSON value the API accepts passes through here, however deeply it is
    nested (attributes, event properties, rule trees, content): a NUL character, or a NaN or
    Infinity (which Python's JSON reader accepts), becomes a 400 naming its field path,
    before any schema or service sees it.
    """

    def parse_body(self, request):
        data = json.loads(request.body)
        _refuse_unstorable(data, "body")
        return data

    def parse_querydict(self, data, list_fields, request):
        result = super().parse_querydict(data, list_fields, request)
        _refuse_unstorable(result, "query")
        return result


class UnstorableInput(ValidationError):
    pass


def _refuse_unstorable(data, origin: str) -> None:
    problems = [{"loc": (origin, *where), "msg": message, "type": "value_error"} for where, message in unstorable(data)]
    if problems:
        raise UnstorableInput(problems)


api = NinjaAPI(
    title="Switchboard API",
    version="1",
    description=(
        "Push customer profiles and events from web, app, IVR, contact centre and CRM; manage "
        "preferences and consent. Authenticate with `Authorization: Bearer <key>` "
        "(create a key with `python manage.py create_api_key NAME` or in Django admin)."
    ),
    docs_url="/docs",
    openapi_url="/openapi.json",
    urls_namespace="api",
    auth=ApiKeyAuth(),
    parser=StorableInputParser(),
)


def error_response(request, status: int, message: str, errors: list[dict] | None = None):
    return api.create_response(request, {"message": message, "errors": errors or []}, status=status)


def _describe(error: dict) -> dict:
    """Turn one pydantic error into {index?, field, message} a person can act on."""
    # Only the leading location names where the value came from; a field may be called "body".
    loc = list(error.get("loc", ()))
    while loc and loc[0] in ("body", "payload", "query", "path", "form", "file"):
        loc.pop(0)
    index = None
    if len(loc) >= 2 and loc[0] in BATCH_FIELDS and isinstance(loc[1], int):
        index, loc = loc[1], loc[2:]
    field = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc).replace(".[", "[")
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = f"unknown field '{loc[-1] if loc else field}'; check the spelling against /api/docs"
    elif error.get("type") == "missing":
        message = "this field is required"
    item = {"field": field or "body", "message": message}
    if index is not None:
        item = {"index": index, **item}
    return item


@api.exception_handler(ValidationError)
def on_validation_error(request, exc: ValidationError):
    return error_response(
        request, 400, "The request was not accepted; nothing was written.", [_describe(e) for e in exc.errors]
    )


@api.exception_handler(InputError)
def on_input_error(request, exc: InputError):
    return error_response(request, 400, exc.message, [error.as_dict() for error in exc.errors])


@api.exception_handler(AuthenticationError)
def on_authentication_error(request, exc):
    return error_response(
        request,
        401,
        "Missing or invalid API key: send 'Authorization: Bearer <key>'. "
        "Create a key with 'python manage.py create_api_key NAME' or in Django admin.",
    )


@api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError):
    if isinstance(exc.__cause__, UnstorableInput):  # ninja wraps whatever the body parser raises
        return on_validation_error(request, exc.__cause__)
    message = str(exc)
    if message.startswith("Cannot parse request body"):
        message = "The request body is not valid JSON; send a JSON object with Content-Type: application/json."
    return error_response(request, exc.status_code, message)


@api.exception_handler(Http404)
def on_not_found(request, exc):
    message = str(exc) if str(exc) else "Not found."
    return error_response(request, 404, message)


@csrf_exempt  # API clients send no CSRF token; nothing is written here
def not_found(request, *args, **kwargs):
    """Any /api/ path no endpoint answers (``/api/v1/customers/abc`` included: ids are whole
    numbers): the API's JSON 404 rather than Django's HTML page."""
    return JsonResponse(
        {"message": f"No API endpoint at {request.path}; ids are whole numbers. See /api/docs.", "errors": []},
        status=404,
    )


@api.exception_handler(RequestDataTooBig)
def on_too_big(request, exc):
    return error_response(request, 413, "The request body is too large; send at most 1,000 items per batch.")


@api.exception_handler(Exception)
def on_unexpected(request, exc):
    logger.exception("API error on %s %s", request.method, request.path)
    return error_response(request, 500, "Something went wrong on our side; the error has been logged.")


from campaigns.api import router as campaigns_router  # noqa: E402
from customers.api import router as customers_router  # noqa: E402
from customers.imports.api import router as imports_router  # noqa: E402
from journeys.api import router as journeys_router  # noqa: E402
from journeys.api_actions import router as actions_router  # noqa: E402
from segments.api import router as segments_router  # noqa: E402
from webhooks.api import router as webhooks_router  # noqa: E402

api.add_router("/v1/", customers_router)
api.add_router("/v1/", imports_router)
api.add_router("/v1/", segments_router)
api.add_router("/v1/", campaigns_router)
api.add_router("/v1/", actions_router)
api.add_router("/v1/", journeys_router)
api.add_router("/v1/", webhooks_router)
