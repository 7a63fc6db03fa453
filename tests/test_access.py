"""Who may use each URL: every pattern the URL resolver knows, asked for by five users.

The patterns come from ``get_resolver()`` through every include (Django admin, the API,
anymail's webhooks); each gets a concrete URL filled with the ids of objects made here.
Who may use a URL is declared once, in ACCESS; a pattern that ACCESS does not cover fails
``test_every_url_declares_who_may_use_it``, so a new page is checked from the day it is
added. Someone who is refused gets the same refusal when they write (a POST; on the API,
every writing method the path takes), and nothing is written.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.shortcuts import resolve_url
from django.test import Client
from django.urls import Resolver404, URLResolver, get_resolver, resolve, reverse
from django.utils.regex_helper import normalize

from campaigns import dispatch
from campaigns.services import lifecycle
from campaigns.models import Delivery, SandboxMessage
from customers.imports.services import import_upload
from customers.models import Customer
from journeys.models import Action, Decision
from tests.journeys.factories import live_version, support_task, task_graph, waiting_at
from tests.campaigns.conftest import audience, make_campaign  # noqa: F401  (audience is a fixture)
from tests.conftest import WAIT_SECONDS
from webhooks import services as webhook_services

pytestmark = [
    pytest.mark.django_db,
    # anymail warns about each ESP whose webhook it is asked for (deprecated names, no secret
    # set); this test asks every one of them only who may call it.
    pytest.mark.filterwarnings("ignore:::anymail"),
]

ROLES = ("anonymous", "outsider", "support", "marketer", "admin")

# What a request gets: an answer, or one of the ways of being turned away.
ANSWERED = "an answer"
SIGN_IN = "a redirect to the sign-in page"
ADMIN_SIGN_IN = "a redirect to Django admin's sign-in page"
FORBIDDEN = "403 Forbidden"
NO_KEY = "401 asking for an API key"


@dataclass(frozen=True)
class Access:
    """Who may use a URL: what each of the five users may get from it."""

    who: str
    outcomes: dict[str, frozenset[str]]
    # Our own pages: someone without the role gets the styled 403 page.
    styled_403: bool = False
    # The URLs name our own objects, which the test makes: a 404 means a wrong id.
    ids_exist: bool = False
    # Provider webhooks: a session changes nothing, so all five get the same answer, to a
    # POST as well (which, unsigned, must write nothing).
    same_for_everyone: bool = False
    # The API: answered only with an API key. Its router turns away a method the path does
    # not take (405) before it asks for the key.
    api: bool = False

    def allows(self, role: str) -> bool:
        return ANSWERED in self.outcomes[role]


def _everyone(*outcomes: str) -> dict[str, frozenset[str]]:
    return {role: frozenset(outcomes) for role in ROLES}


def _pages(who: str, *allowed: str) -> Access:
    """Pages behind ``role_required``: the anonymous are sent to sign in, other roles refused."""
    outcomes = {role: frozenset({ANSWERED if role in allowed else SIGN_IN if role == "anonymous" else FORBIDDEN})
                for role in ROLES}
    return Access(who, outcomes, styled_403=True, ids_exist=True)


PUBLIC = Access("anyone, signed in or not", _everyone(ANSWERED))
# Without the provider's signature: 403 (Twilio), 503 while no secret is set (anymail).
WEBHOOK = Access("the provider, checked by its signature or secret", _everyone(ANSWERED, FORBIDDEN),
                 same_for_everyone=True)
SIGNED_IN = _pages("anyone signed in, with a role or not", "outsider", "support", "marketer", "admin")
CUSTOMERS = _pages("support staff and marketers (and admins)", "support", "marketer", "admin")
MARKETING = _pages("marketers (and admins)", "marketer", "admin")
# Inside, Django admin itself answers 403 where a model admin lets nobody do something (add
# to read-only history, delete a customer) and to an autocomplete without its parameters.
ADMIN_SITE = Access("admins, in Django admin", {
    role: frozenset({ANSWERED, FORBIDDEN} if role == "admin" else {ADMIN_SIGN_IN}) for role in ROLES
})
API = Access("API clients with a key (a session is not a key)", _everyone(NO_KEY), ids_exist=True, api=True)
# The Segment-compatible source API: a source write key only (a session or a JSON API key is not one).
SOURCE = Access("Segment and RudderStack SDKs with a write key", _everyone(NO_KEY), api=True)
SOURCE_SETTINGS = Access("analytics.js, with a write key in the path", _everyone(NO_KEY))

# Keyed by URL name ("customers:detail"), by namespace ("admin:", for URLs a library makes),
# or, for a pattern without a name, by its route. The longest matching key wins.
ACCESS: dict[str, Access] = {
    # Signing in and out, and the password reset asked for while signed out.
    "login": PUBLIC,
    "logout": PUBLIC,
    "password_reset": PUBLIC,
    "password_reset_done": PUBLIC,
    "password_reset_confirm": PUBLIC,
    "password_reset_complete": PUBLIC,
    "password_change": SIGNED_IN,
    "password_change_done": SIGNED_IN,
    # The overview, and the support desk: finding customers, their timeline, their preferences.
    "home": CUSTOMERS,
    "customers:list": CUSTOMERS,
    "customers:detail": CUSTOMERS,
    "customers:timeline": CUSTOMERS,
    "customers:subscription_change": CUSTOMERS,
    "customers:note_add": CUSTOMERS,
    "segments:customer_segments": CUSTOMERS,  # the Segments card on the customer page
    # Importing customers from CSV: marketers (and admins), not support staff.
    "customers:imports": MARKETING,
    "customers:import_new": MARKETING,
    "customers:import_detail": MARKETING,
    "customers:import_start": MARKETING,
    "customers:import_progress": MARKETING,
    "customers:import_report": MARKETING,
    "customers:import_discard": MARKETING,
    # Segments.
    "segments:list": MARKETING,
    "segments:new": MARKETING,
    "segments:preview": MARKETING,
    "segments:detail": MARKETING,
    "segments:edit": MARKETING,
    "segments:delete": MARKETING,
    "segments:recompute": MARKETING,
    "segments:progress": MARKETING,
    "segments:members": MARKETING,
    "segments:members_add": MARKETING,
    "segments:members_remove": MARKETING,
    "segments:check": MARKETING,
    "segments:why": MARKETING,
    # Campaigns, the sandbox outbox and a campaign's live dashboard.
    "campaigns:list": MARKETING,
    "campaigns:new": MARKETING,
    "campaigns:preview": MARKETING,
    "campaigns:preview_frame": MARKETING,
    "campaigns:outbox": MARKETING,
    "campaigns:outbox_message": MARKETING,
    "campaigns:outbox_message_frame": MARKETING,
    "campaigns:detail": MARKETING,
    "campaigns:edit": MARKETING,
    "campaigns:delete": MARKETING,
    "campaigns:launch": MARKETING,
    "campaigns:pause": MARKETING,
    "campaigns:resume": MARKETING,
    "campaigns:cancel": MARKETING,
    "campaigns:send_remainder": MARKETING,
    "campaign-dashboard": MARKETING,
    # Journeys: the list, the builder, the live map, publishing, dry runs and tests.
    "journeys:list": MARKETING,
    "journeys:detail": MARKETING,
    "journeys:pause": MARKETING,
    "journeys:resume": MARKETING,
    "journeys:stop": MARKETING,
    "journeys:map_node": MARKETING,
    "journeys:publish": MARKETING,
    "journeys:dry_run": MARKETING,
    "journeys:test": MARKETING,
    "journeys:test_run": MARKETING,
    "journeys:builder": MARKETING,
    "journeys:builder_draft": MARKETING,
    "journeys:builder_node": MARKETING,
    "journeys:builder_settings": MARKETING,
    "journeys:builder_validate": MARKETING,
    # The next-best-action catalog is the marketers'; a decision's "why" is for support too.
    "journeys:action_list": MARKETING,
    "journeys:action_new": MARKETING,
    "journeys:action_edit": MARKETING,
    "journeys:decision": CUSTOMERS,
    # The Journeys card on the customer page, and the support queue of tasks journeys hand over.
    "journeys:customer_card": CUSTOMERS,
    "journeys:tasks": CUSTOMERS,
    "journeys:task": CUSTOMERS,
    "journeys:task_assign": CUSTOMERS,
    # Reached from messages by customers, who never sign in: the signed token is the key.
    "tracking:open": PUBLIC,
    "tracking:click": PUBLIC,
    "tracking:unsubscribe": PUBLIC,
    "tracking:preferences-request": PUBLIC,
    "tracking:preferences": PUBLIC,
    # Provider callbacks.
    "tracking:twilio-status": WEBHOOK,
    "tracking:twilio-inbound": WEBHOOK,
    "tracking:anymail:": WEBHOOK,
    # The JSON API; its documentation is public, and so is its JSON 404 for any other path.
    "api:": API,
    "api:api-root": PUBLIC,
    "api:openapi-json": PUBLIC,
    "api:openapi-view": PUBLIC,
    "^api/": PUBLIC,
    # Segment's tracking API and analytics.js's settings, for SDKs with a source write key.
    "sources:batch": SOURCE,
    "sources:message": SOURCE,
    "sources:settings": SOURCE_SETTINGS,
    # Django admin, with its own sign-in page; signing out asks nothing of anyone.
    "admin:": ADMIN_SITE,
    "admin:login": PUBLIC,
    "admin:logout": PUBLIC,
}


# --- The patterns ------------------------------------------------------------------------------


@dataclass
class Pattern:
    name: str  # with its namespaces, "" for a pattern without a name
    namespace: str  # "admin:", "tracking:anymail:", "" at the top
    route: str  # as Django reports it in ResolverMatch.route
    regex: str  # the whole path as one regular expression
    callback: object

    @property
    def key(self) -> str:
        return self.name or self.route


def _join_route(first: str, second: str) -> str:
    # As Django joins the routes of nested patterns for ResolverMatch.route.
    return second if not first else first + second.removeprefix("^")


def url_patterns(resolver=None, namespace: str = "", route: str = "", regex: str = ""):
    """Every endpoint pattern under ``resolver`` (the root URLconf by default), in resolving order."""
    for entry in (resolver or get_resolver()).url_patterns:
        joined_route = _join_route(route, str(entry.pattern))
        joined_regex = regex + entry.pattern.regex.pattern.removeprefix("^")
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from url_patterns(entry, inner, joined_route, joined_regex)
        else:
            name = f"{namespace}{entry.name}" if entry.name else ""
            yield Pattern(name, namespace, joined_route, joined_regex, entry.callback)


def access_for(pattern: Pattern) -> Access | None:
    if pattern.key in ACCESS:
        return ACCESS[pattern.key]
    namespaces = [key for key in ACCESS if key.endswith(":") and pattern.namespace.startswith(key)]
    return ACCESS[max(namespaces, key=len)] if namespaces else None


def concrete_url(pattern: Pattern, values: dict[str, object]) -> str:
    """A URL that resolves to ``pattern``, its parameters filled from ``values``; AssertionError
    saying what is missing otherwise."""
    unanchored = not pattern.regex.endswith(("$", r"\Z"))
    missing: set[str] = set()
    for template, params in normalize(pattern.regex):
        if not set(params) <= values.keys():
            missing |= set(params) - values.keys()
            continue
        url = "/" + template % {param: values[param] for param in params}
        if unanchored:
            url += "anything-else"  # a catch-all pattern: any path under its prefix
        try:
            if resolve(url).route == pattern.route:
                return url
        except Resolver404:
            pass
    if missing:
        raise AssertionError(f"no value for the parameter {', '.join(sorted(missing))} of {pattern.key}: "
                             "add one to path_values() in tests/test_access.py")
    raise AssertionError(f"could not build a URL that resolves to {pattern.key} ({pattern.route})")


# --- The users, the objects, and what happened -------------------------------------------------


@pytest.fixture
def clients(outsider, support, marketer, admin_user) -> dict[str, Client]:
    """One client per role, signed in once."""
    # Django admin's model pages ask for model permissions, which the Admin group does not
    # hold: admins are superusers there (as seed_demo and createsuperuser make them).
    admin_user.is_superuser = True
    admin_user.save(update_fields=["is_superuser"])
    clients = {"anonymous": Client()}
    for role, user in (("outsider", outsider), ("support", support), ("marketer", marketer), ("admin", admin_user)):
        clients[role] = Client()
        clients[role].force_login(user)
    return clients


@pytest.fixture
def key_client(api_key) -> Client:
    return Client(headers={"Authorization": f"Bearer {api_key}"})


@pytest.fixture
def objects(audience):
    """A campaign launched and sent through the sandbox: deliveries and outbox messages exist."""
    campaign = lifecycle.campaign_launch(campaign=make_campaign(audience), actor="test")
    dispatch.dispatch(budget_seconds=WAIT_SECONDS)
    ada = audience["people"]["ada"]
    # A live journey handing Ada to support (a task), a test run of it, an action and a decision.
    version = live_version(task_graph())
    run = waiting_at(version, "call", customer=ada)
    task = support_task(run)
    test_run = waiting_at(version, "call", customer=ada, test=True, run_key="test:1")
    action = Action.objects.create(key="coupon", name="Coupon", accept_event="order_completed")
    decision = Decision.objects.create(customer=ada, action=action, journey_id=version.journey_id, node="offer",
                                       idempotency_key="access-test")
    # An outgoing webhook endpoint.
    webhook = webhook_services.endpoint_create(url="https://hooks.example.com/x", events=["*"], actor="test")
    customer_import = import_upload(file=io.BytesIO(b"id,email\nx-1,x1@example.com\n"), filename="crm.csv", actor="test")
    return {"campaign": campaign, "segment": audience["segment"], "customer": ada, "journey": version.journey,
            "task": task, "test_run": test_run, "action": action, "decision": decision, "webhook": webhook,
            "import": customer_import}


def path_values(objects, user) -> dict[str, object]:
    """A value for each path parameter, by name: ids of objects that exist, or a token that
    does not verify (the public pages answer it like any other)."""
    return {
        "customer_id": objects["customer"].pk,
        "segment_id": objects["segment"].pk,
        "journey_id": objects["journey"].pk,
        "node_id": "call",
        "enrollment_id": objects["test_run"].pk,
        "task_id": objects["task"].pk,
        "action_id": objects["action"].pk,
        "decision_id": objects["decision"].pk,
        "campaign_id": objects["campaign"].pk,
        "webhook_id": objects["webhook"].pk,
        "import_id": objects["import"].pk,
        "delivery_id": Delivery.objects.filter(campaign=objects["campaign"]).first().pk,
        "message_id": SandboxMessage.objects.filter(channel="email").first().pk,  # the email frame needs an email
        "frame_key": "0" * 32,
        "token": "not-a-valid-token",
        "kind": "track",
        "write_key": "sbw_not-a-write-key",
        "uidb64": "MQ",
        # Django admin.
        "app_label": "customers",
        "content_type_id": ContentType.objects.get_for_model(Customer).pk,
        "object_id": objects["customer"].pk,
        "id": user.pk,
        "url": "no-such-page/",  # the catch-all after every other admin URL
    }


def admin_values(pattern: Pattern, values: dict[str, object]) -> dict[str, object]:
    """On a model's admin pages, ``object_id`` is a row of that model, when it has one."""
    model_admin = getattr(pattern.callback, "model_admin", None)
    if model_admin is None:
        return values
    pk = model_admin.model._default_manager.values_list("pk", flat=True).first()
    return {**values, "object_id": pk if pk is not None else 0}


def rows_written() -> int:
    """Rows inserted, updated or deleted so far in this test's transaction, by PostgreSQL's
    own count, so that no table can be missed."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_xact_user_tables")
        return cursor.fetchone()[0]


def outcome(response) -> str:
    location = response.headers.get("Location", "")
    if response.status_code == 302 and location.startswith(resolve_url(settings.LOGIN_URL) + "?next="):
        return SIGN_IN
    if response.status_code == 302 and location.startswith(reverse("admin:login") + "?next="):
        return ADMIN_SIGN_IN
    if response.status_code == 403:
        return FORBIDDEN
    if response.status_code == 401:
        return NO_KEY
    return ANSWERED


def shown(response) -> str:
    location = response.headers.get("Location")
    return f"{response.status_code}" + (f" to {location}" if location else "")


def writing_methods(client: Client, url: str, access: Access) -> list[str]:
    """POST for a page (a refusal comes before the method is looked at); for the API, every
    writing method the path takes, as its 405 to OPTIONS lists them."""
    if not access.api:
        return ["POST"]
    allowed = client.options(url).headers.get("Allow", "")
    return [method for method in ("POST", "PUT", "PATCH", "DELETE") if method in allowed] or ["POST"]


def check(method: str, client: Client, url: str, *, access: Access, expected: frozenset[str], role: str):
    """Ask for ``url`` as ``role``: the status, and what was wrong with the answer."""
    if method == "GET":
        response = client.get(url)
    elif access.api:
        response = client.generic(method, url, "{}", content_type="application/json")
    else:
        response = client.post(url, {})
    said = f"{method} {url} as {role} (declared for {access.who})"
    got = outcome(response)
    if access.api and NO_KEY in expected and response.status_code == 405:
        if method in response["Allow"]:
            return response.status_code, [f"{said}: 405, though the path takes {method}"]
        return response.status_code, []
    if got not in expected:
        return response.status_code, [f"{said}: expected {' or '.join(sorted(expected))}, got {shown(response)}"]
    problems = []
    if response.status_code == 500:
        problems.append(f"{said}: a server error")
    if got == FORBIDDEN and access.styled_403:
        page = response.content.decode()
        # The styled page, telling someone without any role what to ask for.
        if "app.css" not in page or (role == "outsider" and "has no Switchboard role" not in page):
            problems.append(f"{said}: the 403 is not the styled page")
    if got == NO_KEY and not json.loads(response.content)["message"].startswith("Missing or invalid API key"):
        problems.append(f"{said}: the 401 does not say how to send a key")
    if got == ANSWERED and response.status_code == 404 and access.ids_exist:
        problems.append(f"{said}: 404, though the objects in the URL exist")
    return response.status_code, problems


# --- The tests ---------------------------------------------------------------------------------


def test_every_url_declares_who_may_use_it():
    undeclared = [f"{pattern.key}  ({pattern.route})" for pattern in url_patterns() if access_for(pattern) is None]
    assert not undeclared, (
        "These URL patterns do not say who may use them. Add each to ACCESS in tests/test_access.py "
        "(public, signed in, support and marketers, marketers, Django admin, API key, or a webhook):\n  "
        + "\n  ".join(undeclared)
    )


def test_every_access_entry_is_used():
    patterns = list(url_patterns())
    used = {pattern.key for pattern in patterns} | {
        key for key in ACCESS if key.endswith(":") and any(pattern.namespace.startswith(key) for pattern in patterns)
    }
    assert set(ACCESS) <= used, f"ACCESS names URLs that no longer exist: {sorted(set(ACCESS) - used)}"


def test_each_url_answers_who_may_use_it_and_refuses_everyone_else(clients, key_client, objects, admin_user):
    values = path_values(objects, admin_user)
    problems: list[str] = []
    seen: set[str] = set()
    for pattern in url_patterns():
        access = access_for(pattern)
        if access is None:
            continue  # test_every_url_declares_who_may_use_it names it
        try:
            url = concrete_url(pattern, admin_values(pattern, values))
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        if url in seen:
            continue  # a pattern that an earlier one answers for (the API's one path per method)
        seen.add(url)
        statuses: dict[str, set[int]] = {}
        for role in ROLES:
            expected = access.outcomes[role]
            methods = ["GET"]
            if not access.allows(role) or access.same_for_everyone:
                # Those who may use it do not write here: that would change what the others see.
                methods += writing_methods(clients[role], url, access)
            for method in methods:
                before = rows_written()
                status, found = check(method, clients[role], url, access=access, expected=expected, role=role)
                statuses.setdefault(method, set()).add(status)
                problems += found
                if method != "GET" and rows_written() != before:
                    problems.append(f"{method} {url} as {role}, who may not use it, wrote to the database")
        if access.same_for_everyone:
            problems += [f"{method} {url} answers differently per user: {sorted(codes)}"
                         for method, codes in statuses.items() if len(codes) > 1]
        if access.api:
            _, found = check("GET", key_client, url, access=access, expected=frozenset({ANSWERED}), role="an API key")
            problems += found
    assert not problems, f"{len(problems)} access problems:\n  " + "\n  ".join(problems)
