"""Import pages: the list, the upload, and one import (mapping → progress → result)."""

from __future__ import annotations

from django.contrib import messages
from django.http import StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from core.audit import user_actor
from core.errors import InputError
from core.htmx import wants_partial

from ..models import LegalBasis, Topic
from ..roles import MARKETER, role_required
from . import forms, mapping, queries, services
from .models import CustomerImport, ImportIssue, MatchKey

DETAIL_TEMPLATE = "customers/imports/detail.html"


@role_required(MARKETER)
def import_list(request):
    return render(request, "customers/imports/list.html", {"imports": queries.imports_recent()})


@role_required(MARKETER)
def import_new(request):
    form = forms.UploadForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                customer_import = services.import_upload(
                    file=upload, filename=upload.name, actor=user_actor(request), user=request.user)
            except InputError as exc:
                for error in exc.errors:
                    form.add_error("file", error.message)
            else:
                return redirect("customers:import_detail", customer_import.pk)
        status = 422
    return render(request, "customers/imports/new.html", {"form": form}, status=status)


def _mapping_rows(customer_import: CustomerImport, spec: dict, errors: dict[str, str]) -> list[dict]:
    rows = []
    for index, column in enumerate(customer_import.columns):
        item = spec.get(column) or {"to": "skip"}
        samples = [row[index] for row in customer_import.preview if index < len(row) and row[index] not in (None, "")]
        rows.append({
            "index": index, "column": column, "samples": samples[:3], "choice": forms.choice_of(item),
            "key": item.get("key") or mapping._attribute_key(column), "source": item.get("source", "import"),
            "legal_basis": item.get("legal_basis", LegalBasis.CONSENT), "wording": item.get("wording", ""),
            "error": errors.get(f"mapping.{column}"),
        })
    return rows


def _detail_context(customer_import: CustomerImport, *, spec: dict | None = None, errors: dict | None = None,
                    match_on: str | None = None, update_existing: bool | None = None) -> dict:
    context = {"imp": customer_import, "progress": customer_import.progress()}
    if customer_import.status == CustomerImport.Status.STAGED:
        topics = list(Topic.objects.order_by("is_transactional", "name"))
        if spec is None:
            spec = mapping.guess(customer_import.columns, customer_import.preview, topics)
        context.update(
            rows=_mapping_rows(customer_import, spec, errors or {}), choices=forms.choices(topics),
            legal_bases=LegalBasis.choices, match_choices=MatchKey.choices,
            match_on=match_on or next((f for f in MatchKey.values if {"to": f} in spec.values()), MatchKey.EXTERNAL_ID),
            update_existing=True if update_existing is None else update_existing,
            general_errors=[message for field, message in (errors or {}).items() if not field.startswith("mapping.")],
        )
    elif customer_import.status == CustomerImport.Status.DONE:
        context.update(
            rejected=queries.issues_sample(customer_import, kind=ImportIssue.Kind.REJECTED),
            warnings=queries.issues_sample(customer_import, kind=ImportIssue.Kind.WARNING),
        )
    return context


@role_required(MARKETER)
def import_detail(request, import_id: int):
    customer_import = queries.import_get(import_id=import_id)
    return render(request, DETAIL_TEMPLATE, _detail_context(customer_import))


@role_required(MARKETER)
@require_POST
def import_start(request, import_id: int):
    customer_import = queries.import_get(import_id=import_id)
    spec = forms.mapping_from_post(request.POST, customer_import.columns)
    match_on = request.POST.get("match_on", "")
    update_existing = request.POST.get("update_existing") == "on"
    try:
        services.import_start(customer_import=customer_import, mapping_spec=spec, match_on=match_on,
                              update_existing=update_existing, actor=user_actor(request))
    except InputError as exc:
        errors = {error.field: error.message for error in exc.errors}
        context = _detail_context(customer_import, spec=spec, errors=errors, match_on=match_on,
                                  update_existing=update_existing)
        return render(request, DETAIL_TEMPLATE, context, status=422)
    return redirect("customers:import_detail", customer_import.pk)


@role_required(MARKETER)
def import_progress(request, import_id: int):
    """The progress card, polled while the import runs; once it has finished, htmx is told to
    reload the page, which shows the result."""
    customer_import = queries.import_get(import_id=import_id)
    if not wants_partial(request):
        return redirect("customers:import_detail", customer_import.pk)
    response = render(request, f"{DETAIL_TEMPLATE}#progress", _detail_context(customer_import))
    if not customer_import.is_running:
        response["HX-Refresh"] = "true"
    return response


@role_required(MARKETER)
def import_report(request, import_id: int):
    customer_import = queries.import_get(import_id=import_id)
    response = StreamingHttpResponse(queries.report_csv(customer_import), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{customer_import.pk}-report.csv"'
    return response


@role_required(MARKETER)
@require_POST
def import_discard(request, import_id: int):
    customer_import = queries.import_get(import_id=import_id)
    if services.import_discard(customer_import=customer_import, actor=user_actor(request)):
        messages.success(request, f"The upload of {customer_import.filename} was discarded.")
    return redirect("customers:imports")


