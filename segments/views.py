"""Segments UI: the list, the builder with a live preview, the segment page, and "why"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

import plotly.graph_objects as go
from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from customers import queries as customer_queries
from customers.models import ChannelKind
from customers.roles import MARKETER, SUPPORT, role_required
from core import charts
from core.audit import user_actor
from core.errors import InputError
from core.htmx import render_partials, wants_partial
from core.text import counted

from . import queries, services
from . import rules as rule_language
from .forms import CustomerLookupForm, MembersImportForm, SegmentForm
from .models import Segment

LIST_TEMPLATE = "segments/list.html"
BUILDER_TEMPLATE = "segments/builder.html"
DETAIL_TEMPLATE = "segments/detail.html"
WHY_TEMPLATE = "segments/why.html"
CUSTOMER_TEMPLATE = "segments/customer_segments.html"

MEMBERS_PER_PAGE = 25
RECENT_CHANGES = 15
CHART_DAYS = 30


# --- List ---------------------------------------------------------------------------------------


@dataclass
class SegmentRow:
    segment: Segment
    delta: int | None  # size now minus size a day ago; None without a sample that old


@role_required(MARKETER)
def segment_list(request):
    segments = queries.segments_with_trend()
    rows = [
        SegmentRow(segment, None if segment.size_day_ago is None else segment.member_count - segment.size_day_ago)
        for segment in segments
    ]
    return render(request, LIST_TEMPLATE, {"rows": rows})


# --- Builder ------------------------------------------------------------------------------------

PROFILE_FIELDS = {
    "lifecycle_stage": "Lifecycle stage",
    "email": "Email",
    "phone": "Phone",
    "first_name": "First name",
    "last_name": "Last name",
    "external_id": "External id",
    "locale": "Locale",
    "timezone": "Time zone",
    "created_at": "Created",
    "updated_at": "Updated",
    "last_seen_at": "Last seen",
}

OPERATOR_LABELS = {
    "text": {
        "eq": "is", "ne": "is not", "in": "is one of", "not_in": "is none of", "contains": "contains",
        "starts_with": "starts with", "exists": "is set", "not_exists": "is not set",
    },
    "number": {
        "eq": "=", "ne": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤", "in": "is one of",
        "not_in": "is none of", "exists": "is set", "not_exists": "is not set",
    },
    "date": {
        "within_days": "in the last … days", "before_days": "more than … days ago", "gt": "after",
        "gte": "on or after", "lt": "before", "lte": "on or before", "exists": "is set", "not_exists": "is not set",
    },
    "bool": {"eq": "is", "ne": "is not", "exists": "is set", "not_exists": "is not set"},
}
COUNT_LABELS = {"gte": "at least", "gt": "more than", "eq": "exactly", "ne": "not exactly", "lt": "fewer than", "lte": "at most"}


def _operators() -> dict[str, list[list[str]]]:
    """Operators per value type, in the builder's order, limited to what the rule language accepts."""
    allowed = {
        "text": rule_language.TEXT_OPS, "number": rule_language.NUMBER_OPS,
        "date": rule_language.DATE_OPS, "bool": rule_language.BOOL_OPS,
    }
    return {kind: [[op, label] for op, label in labels.items() if op in allowed[kind]] for kind, labels in OPERATOR_LABELS.items()}


def _builder_data(segment: Segment | None) -> dict:
    """Everything the rule editor's pickers offer."""
    names = [name for name in PROFILE_FIELDS if name in rule_language.BUILTIN_FIELDS]
    names += [name for name in rule_language.BUILTIN_FIELDS if name not in PROFILE_FIELDS]
    fields = [
        {"value": name, "label": PROFILE_FIELDS.get(name, name), "type": "date" if name in rule_language.DATE_FIELDS else "text"}
        for name in names
    ]
    others = [
        {"id": other.pk, "name": other.name, "kind": other.kind}
        for other in queries.segments_with_trend()
        if segment is None or other.pk != segment.pk
    ]
    return {
        "fields": fields,
        "attributeKeys": queries.attribute_keys_seen(),
        "events": queries.event_names_seen(),
        "stages": customer_queries.lifecycle_stages(),
        "topics": [{"key": key, "name": name} for key, name in customer_queries.topic_names().items()],
        "channels": [{"value": value, "label": label} for value, label in ChannelKind.choices],
        "segments": others,
        "operators": _operators(),
        "countOperators": [[op, label] for op, label in COUNT_LABELS.items() if op in rule_language.COUNT_OPS],
    }


def _builder_page(request, form: SegmentForm, *, segment: Segment | None, status: int = 200):
    if form.is_bound:
        rules_text = form.data.get("rules", "")
    elif segment is not None and segment.rules is not None:
        rules_text = json.dumps(segment.rules, indent=2, ensure_ascii=False)
    else:
        rules_text = json.dumps({"all": []})
    context = {
        "form": form,
        "segment": segment,
        "rules_text": rules_text,
        "is_dynamic": form.is_dynamic,
        "builder_data": _builder_data(segment),
    }
    return render(request, BUILDER_TEMPLATE, context, status=status)


def _check_rules_too(form: SegmentForm) -> None:
    """After another field failed, report rule problems as well, so one attempt shows them all."""
    rules = form.cleaned_data.get("rules") if hasattr(form, "cleaned_data") else None
    if form.rule_errors or rules is None or not form.is_dynamic:
        return
    try:
        queries.compile_for_preview(rules)
    except rule_language.RuleError as exc:
        form.rule_errors.extend(exc.errors)


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def segment_new(request):
    kind = Segment.Kind.STATIC if request.GET.get("kind") == Segment.Kind.STATIC else Segment.Kind.DYNAMIC
    form = SegmentForm(request.POST or None, initial={"kind": kind})
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                segment = services.segment_create(
                    name=data["name"], description=data["description"], static=not form.is_dynamic,
                    rules=data["rules"] if form.is_dynamic else None, actor=user_actor(request), user=request.user,
                )
            except InputError as exc:
                form.add_service_errors(exc)
            else:
                if segment.is_dynamic and not segment.is_ready:
                    messages.success(request, f"Segment “{segment.name}” created; its members are being computed.")
                elif segment.is_dynamic:
                    messages.success(request, f"Segment “{segment.name}” created: {counted(segment.member_count, 'member')}.")
                else:
                    messages.success(request, f"Static segment “{segment.name}” created. Add its members below.")
                return redirect("segments:detail", segment.pk)
        _check_rules_too(form)
        return _builder_page(request, form, segment=None, status=422)
    return _builder_page(request, form, segment=None)


@role_required(MARKETER)
@require_http_methods(["GET", "POST"])
def segment_edit(request, segment_id: int):
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    form = SegmentForm(request.POST or None, segment=segment, initial={"name": segment.name, "description": segment.description})
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            before = segment.compiled
            try:
                segment = services.segment_update(
                    segment=segment, actor=user_actor(request), name=data["name"], description=data["description"],
                    rules=data["rules"] if segment.is_dynamic else None,
                )
            except InputError as exc:
                form.add_service_errors(exc)
            else:
                if segment.compiled != before and not segment.is_ready:
                    messages.success(request, f"Rules saved; the members of “{segment.name}” are being recomputed.")
                elif segment.compiled != before:
                    messages.success(request, f"Rules saved; “{segment.name}” now has {counted(segment.member_count, 'member')}.")
                else:
                    messages.success(request, f"“{segment.name}” saved.")
                return redirect("segments:detail", segment.pk)
        _check_rules_too(form)
        return _builder_page(request, form, segment=segment, status=422)
    return _builder_page(request, form, segment=segment)


@role_required(MARKETER)
@require_POST
def segment_delete(request, segment_id: int):
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    try:
        services.segment_delete(segment=segment, actor=user_actor(request))
    except InputError as exc:
        messages.error(request, "Not deleted: " + "; ".join(error.message for error in exc.errors) + ".")
        return redirect("segments:edit", segment.pk)
    messages.success(request, f"Segment “{segment.name}” deleted.")
    return redirect("segments:list")


@role_required(MARKETER)
@require_POST
def segment_preview(request):
    """The live count and a sample for the rules being edited, or their errors; nothing is saved."""
    text = request.POST.get("rules", "").strip()
    context: dict = {"errors": [], "preview": None, "empty": False}
    try:
        rules = json.loads(text) if text else {"all": []}
    except ValueError as exc:
        context["errors"] = [{"path": "rules", "message": f"The rules are not valid JSON ({exc})."}]
        return render(request, f"{BUILDER_TEMPLATE}#preview", context, status=422)
    if rules in ({"all": []}, {"any": []}, {}):
        context["empty"] = True
        return render(request, f"{BUILDER_TEMPLATE}#preview", context)
    try:
        context["preview"] = queries.segment_preview(rules)
    except rule_language.RuleError as exc:
        context["errors"] = exc.errors
        return render(request, f"{BUILDER_TEMPLATE}#preview", context, status=422)
    return render(request, f"{BUILDER_TEMPLATE}#preview", context)


# --- Segment page -------------------------------------------------------------------------------


@role_required(MARKETER)
def segment_detail(request, segment_id: int):
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    return render(request, DETAIL_TEMPLATE, _detail_context(request, segment))


def _detail_context(request, segment: Segment, **extra) -> dict:
    search = request.GET.get("q", "").strip()[:200]
    sizes = queries.segment_sizes(segment, days=CHART_DAYS)
    now = timezone.now()
    context = {
        "segment": segment,
        "progress": segment.progress(now),
        "delta": _delta(segment, sizes, now=now),
        "rule_tree": _rule_tree(segment.compiled) if segment.compiled else None,
        "chart": _size_chart(segment, sizes, now=now),
        "chart_samples": len(sizes),
        "recent": queries.segment_recent_changes(segment, limit=RECENT_CHANGES),
        "import_form": MembersImportForm(),
        "lookup_form": CustomerLookupForm(),
        **_members_context(segment, search=search),
    }
    context.update(extra)
    return context


def _delta(segment: Segment, sizes, *, now) -> int | None:
    """Size now minus the last sample at least a day old (None without one)."""
    day_ago = [sample.size for sample in sizes if sample.at <= now - timedelta(days=1)]
    return segment.member_count - day_ago[-1] if day_ago else None


def _after_members_change(segment: Segment) -> dict:
    """What the segment page shows around its members, refreshed after members were added or removed."""
    return {
        "delta": _delta(segment, queries.segment_sizes(segment, days=CHART_DAYS), now=timezone.now()),
        "recent": queries.segment_recent_changes(segment, limit=RECENT_CHANGES),
    }


def _members_context(segment: Segment, *, search: str = "", cursor: int | None = None) -> dict:
    page = queries.segment_members_page(segment, limit=MEMBERS_PER_PAGE, cursor=cursor, search=search)
    return {"segment": segment, "members": page.members, "next_cursor": page.next_cursor, "search": search}


def _segment_names(tree: dict) -> dict[int, str]:
    ids: set[int] = set()

    def walk(node):
        for kind in ("all", "any"):
            for child in node.get(kind, ()):
                walk(child)
        if "not" in node:
            walk(node["not"])
        if "segment" in node:
            ids.add(node["segment"])

    walk(tree)
    if not ids:
        return {}
    return dict(queries.segments_with_trend().filter(pk__in=ids).values_list("pk", "name"))


def _rule_tree(compiled: dict, names: dict[int, str] | None = None) -> dict:
    """The rules as nested sentences: {summary, kind, negated, children, segment}."""
    names = _segment_names(compiled) if names is None else names

    def build(node):
        for kind in ("all", "any"):
            if kind in node:
                return {"kind": kind, "summary": rule_language.describe(node), "children": [build(c) for c in node[kind]]}
        if "not" in node:
            return {"kind": "not", "summary": rule_language.describe(node), "children": [build(node["not"])]}
        shown = {"kind": "leaf", "summary": rule_language.describe(node), "children": []}
        if "segment" in node:
            shown["segment"] = {"id": node["segment"], "name": names.get(node["segment"], f"#{node['segment']}")}
        return shown

    return build(compiled)


def _size_chart(segment: Segment, sizes, *, now) -> str:
    """Plotly figure JSON for members over time; the current size closes the line at "now"."""
    xs = [sample.at for sample in sizes]
    ys = [sample.size for sample in sizes]
    if not xs or xs[-1] < now:
        xs.append(now)
        ys.append(segment.member_count)
    figure = go.Figure(
        go.Scatter(
            x=xs, y=ys, mode="lines+markers" if len(xs) <= 40 else "lines",
            line={"color": charts.PRIMARY, "width": 2, "shape": "hv"},
            marker={"size": 6, "color": charts.PRIMARY},
            fill="tozeroy", fillcolor="rgba(67, 56, 202, 0.08)",
            hovertemplate="%{y:,} members<br>%{x|%b %-d, %H:%M}<extra></extra>",
        )
    )
    # At least a day wide, so a new segment's first point does not sit on an axis of seconds.
    start = min(max(xs[0], now - timedelta(days=CHART_DAYS)), now - timedelta(days=1))
    figure.update_layout(**charts.layout(
        height=250, margin={"l": 56, "r": 16, "t": 12, "b": 48}, showlegend=False,
        xaxis={"range": [start, now + (now - start) * 0.02]},
        yaxis={"rangemode": "tozero",
               # Whole people: small audiences get a tick per member, not 0.5 steps.
               **({"dtick": 1, "range": [0, max(ys) + 1]} if max(ys) < 8 else {})},
    ))
    return charts.as_script_json(figure)


@role_required(MARKETER)
@require_POST
def segment_recompute(request, segment_id: int):
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    if not segment.is_dynamic:
        messages.info(request, "A static segment is a list: its members change only when you add or remove them.")
        return redirect("segments:detail", segment.pk)
    change = services.segment_recompute_now(segment=segment, actor=user_actor(request))
    segment.refresh_from_db(fields=["last_full_ms", "status", "compute_error"])
    if segment.status == Segment.Status.FAILED:
        messages.error(request, f"The computation failed: {segment.compute_error}")
    elif change is None:
        messages.success(request, f"“{segment.name}” is being recomputed.")
    else:
        moved = f"{change.entered:,} entered, {change.exited:,} left" if change.entered or change.exited else "nobody entered or left"
        messages.success(
            request, f"Recomputed in {segment.last_full_ms or 0:,} ms: {counted(change.size, 'member')}, {moved}."
        )
    return redirect("segments:detail", segment.pk)


@role_required(MARKETER)
def segment_progress(request, segment_id: int):
    """The computation's progress, polled by the segment page while it computes. When it is
    done, htmx is told to reload the page, which then shows the result."""
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    response = render(request, f"{DETAIL_TEMPLATE}#computation", {"segment": segment, "progress": segment.progress()})
    if segment.status != Segment.Status.COMPUTING and request.GET.get("was") == Segment.Status.COMPUTING:
        response["HX-Refresh"] = "true"
    return response


# --- Members ------------------------------------------------------------------------------------


@role_required(MARKETER)
@vary_on_headers("HX-Request")
def segment_members(request, segment_id: int):
    """Members for htmx: the next page after ``cursor``, or the first page of a search."""
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    search = request.GET.get("q", "").strip()[:200]
    if not wants_partial(request):
        detail = reverse("segments:detail", args=[segment.pk])
        return redirect(f"{detail}?{urlencode({'q': search})}" if search else detail)
    try:
        cursor = int(request.GET.get("cursor") or 0) or None
    except ValueError:
        cursor = None
    context = _members_context(segment, search=search, cursor=cursor)
    return render(request, f"{DETAIL_TEMPLATE}#{'members-page' if cursor else 'members'}", context)


@role_required(MARKETER)
@require_POST
def members_add(request, segment_id: int):
    """Add pasted or uploaded customers to a static segment; report who was not found."""
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    form = MembersImportForm(request.POST, request.FILES)
    result = None
    if form.is_valid():
        data = form.cleaned_data
        try:
            change = services.static_members_change(
                segment=segment, add=True, actor=user_actor(request), emails=data["emails"], external_ids=data["external_ids"]
            )
        except InputError as exc:
            for error in exc.errors:
                form.add_error(None, error.message)
        else:
            requested = len(data["emails"]) + len(data["external_ids"])
            result = {
                "added": change.changed,
                "already": requested - change.changed - len(change.not_found),
                "not_found": change.not_found,
            }
            form = MembersImportForm()
    status = 200 if result is not None else 422
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment.pk)
    if wants_partial(request):
        context = {**_members_context(segment), **_after_members_change(segment), "import_form": form, "import_result": result}
        partials = ["import", "members", "stats", "recent-changes"] if result else ["import"]
        return render_partials(request, [f"{DETAIL_TEMPLATE}#{name}" for name in partials], context, status=status)
    return render(
        request, DETAIL_TEMPLATE, _detail_context(request, segment, import_form=form, import_result=result), status=status
    )


@role_required(MARKETER)
@require_POST
def members_remove(request, segment_id: int):
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    customer = customer_queries.customer_get_for_user(user=request.user, customer_id=_int(request.POST.get("customer")))
    try:
        change = services.static_members_change(segment=segment, add=False, actor=user_actor(request), ids=[customer.pk])
    except InputError as exc:
        messages.error(request, "; ".join(error.message for error in exc.errors).capitalize() + ".")
    else:
        if change.changed:
            messages.success(request, f"{customer.display_name} removed from “{segment.name}”.")
        else:
            messages.info(request, f"{customer.display_name} was not a member of “{segment.name}”.")
    if not wants_partial(request):
        return redirect("segments:detail", segment.pk)
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment.pk)
    search = request.POST.get("q", "").strip()[:200]
    context = {**_members_context(segment, search=search), **_after_members_change(segment)}
    return render_partials(
        request,
        [f"{DETAIL_TEMPLATE}#members", f"{DETAIL_TEMPLATE}#stats", f"{DETAIL_TEMPLATE}#recent-changes", "base.html#flash"],
        context,
    )


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# --- Why ----------------------------------------------------------------------------------------


@role_required(MARKETER)
@vary_on_headers("HX-Request")
def segment_why(request, segment_id: int, customer_id: int):
    """Each rule of the segment evaluated for one customer, with the value that decided it."""
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    customer = customer_queries.customer_get_for_user(user=request.user, customer_id=customer_id)
    context = {"segment": segment, "lookup_form": CustomerLookupForm(initial={"customer": customer.pk}),
               **_explanation(segment, customer)}
    if wants_partial(request):
        return render(request, f"{WHY_TEMPLATE}#explanation", context)
    return render(request, WHY_TEMPLATE, context)


@role_required(MARKETER)
@vary_on_headers("HX-Request")
def segment_check(request, segment_id: int):
    """The "check a customer" box: find the customer by id, email or external id, then explain."""
    segment = queries.segment_get_for_user(user=request.user, segment_id=segment_id)
    form = CustomerLookupForm(request.GET)
    if not form.is_valid():
        context = {"segment": segment, "lookup_form": form, "lookup_failed": True}
        template = f"{WHY_TEMPLATE}#explanation" if wants_partial(request) else WHY_TEMPLATE
        return render(request, template, context, status=422)
    customer = form.cleaned_data["customer"]
    if not wants_partial(request):
        return redirect("segments:why", segment.pk, customer.pk)
    context = {"segment": segment, "lookup_form": form, **_explanation(segment, customer)}
    return render(request, f"{WHY_TEMPLATE}#explanation", context)


def _explanation(segment: Segment, customer) -> dict:
    tree = queries.segment_explain(segment, customer)
    membership = next((m for m in queries.customer_segments(customer.pk) if m.segment_id == segment.pk), None)
    if tree is not None:
        tree = _annotate(tree, segment.compiled, _segment_names(segment.compiled))
    return {"customer": customer, "tree": tree, "membership": membership}


def _annotate(explained: dict, rule: dict, names: dict[int, str]) -> dict:
    """The explanation with each leaf's deciding value put in words, walking the rule alongside."""
    if explained["kind"] in ("all", "any"):
        children = [_annotate(child, sub, names) for child, sub in zip(explained["children"], rule[explained["kind"]])]
        return {**explained, "children": children}
    if explained["kind"] == "not":
        return {**explained, "children": [_annotate(explained["children"][0], rule["not"], names)]}
    node = {**explained, "shown": _shown_value(rule, explained.get("value"))}
    if "segment" in rule:
        node["segment"] = {"id": rule["segment"], "name": names.get(rule["segment"], f"#{rule['segment']}")}
    return node


def _shown_value(rule: dict, value) -> str:
    if "event" in rule:
        count = int(value or 0)
        window = f" in the last {rule['within_days']} days" if "within_days" in rule else ""
        return f"{counted(count, 'matching event')}{window}"
    if value is None or value == "":
        if "subscribed" in rule:
            return "no choice recorded"
        return "not set"
    if "attr" in rule and rule["attr"].startswith("attributes."):
        try:
            decoded = json.loads(value)
        except ValueError:
            return str(value)
        if isinstance(decoded, bool):
            return "true" if decoded else "false"
        return decoded if isinstance(decoded, str) else json.dumps(decoded)
    return str(value)


# --- The customer page's Segments card ----------------------------------------------------------


@role_required(SUPPORT, MARKETER)
@vary_on_headers("HX-Request")
def customer_segments(request, customer_id: int):
    """The customer's segments and segment history, loaded into the customer page by htmx."""
    customer = customer_queries.customer_get_for_user(user=request.user, customer_id=customer_id)
    if not wants_partial(request):
        return redirect(f"{reverse('customers:detail', args=[customer.pk])}#customer-segments")
    context = {
        "customer": customer,
        "memberships": queries.customer_segments(customer.pk),
        "history": queries.customer_segment_history(customer.pk),
        "links": queries.can_see_segments(request.user),
    }
    return render(request, CUSTOMER_TEMPLATE, context)
