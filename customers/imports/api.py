"""Imports API: upload a CSV with its mapping (runs in the background), read its progress and
counts, download its rejected rows."""

from __future__ import annotations

import json
from datetime import datetime

from django.db import transaction
from django.http import StreamingHttpResponse
from ninja import File, Form, Router, Schema, Status, UploadedFile

from core.errors import FieldError, InputError

from ..auth import api_actor
from ..schemas import error_responses
from ..validation import unstorable
from . import mapping as mappings
from . import queries, services, staging
from .models import CustomerImport, ImportIssue, MatchKey

router = Router(tags=["imports"])

ERRORS = error_responses(404)


class ImportOut(Schema):
    id: int
    filename: str
    status: str
    phase_label: str
    rows_total: int
    rows_done: int
    percent: int | None
    seconds_left: float | None
    created: int
    updated: int
    unchanged: int
    rejected: int
    warnings: int
    match_on: str
    update_existing: bool
    error: str
    created_at: datetime
    finished_at: datetime | None

    @staticmethod
    def of(customer_import: CustomerImport) -> dict:
        progress = customer_import.progress()
        return {
            "id": customer_import.pk, "filename": customer_import.filename, "status": customer_import.status,
            "phase_label": progress["phase_label"], "rows_total": customer_import.rows_total,
            "rows_done": progress["rows_done"], "percent": progress["percent"],
            "seconds_left": progress["seconds_left"], "created": customer_import.created_count,
            "updated": customer_import.updated_count, "unchanged": customer_import.unchanged_count,
            "rejected": customer_import.rejected_count, "warnings": customer_import.warning_count,
            "match_on": customer_import.match_on, "update_existing": customer_import.update_existing,
            "error": customer_import.error, "created_at": customer_import.created_at,
            "finished_at": customer_import.finished_at,
        }


class ImportAccepted(Schema):
    id: int
    status: str
    rows_total: int


def _mapping(raw: str, columns: list[str], match_on: str) -> dict:
    try:
        spec = json.loads(raw)
    except ValueError:
        raise InputError([FieldError("mapping", "must be JSON: an object of column name → {\"to\": …}")]) from None
    for where, message in unstorable(spec):
        raise InputError([FieldError("mapping", f"{'.'.join(map(str, where))} {message}".strip())])
    return mappings.check(spec, columns=columns, match_on=match_on)


@router.post("/imports", response={202: ImportAccepted, **ERRORS}, summary="Import customers from a CSV file")
def import_create(request, file: File[UploadedFile], mapping: Form[str],
                  match_on: Form[MatchKey] = MatchKey.EXTERNAL_ID, update_existing: Form[bool] = True):
    """Multipart: ``file`` (CSV, UTF-8, header line first), ``mapping`` (JSON: column name →
    ``{"to": "external_id" | "email" | … | "attribute" | "subscription" | "consent" | "skip"}``,
    see the README), ``match_on`` and ``update_existing``. The file is staged, the mapping
    checked (a bad one is a 400 naming ``mapping.<column>``; nothing is stored), and the import
    runs in the background: read its progress at ``GET /imports/{id}``."""
    head = file.read(staging.HEAD)
    columns, _ = staging.read_header(head)
    spec = _mapping(mapping, columns, match_on)
    file.seek(0)
    actor = api_actor(request)
    with transaction.atomic():
        customer_import = services.import_upload(file=file, filename=file.name or "upload.csv", actor=actor)
        customer_import = services.import_start(customer_import=customer_import, mapping_spec=spec,
                                                match_on=match_on, update_existing=update_existing, actor=actor)
    return Status(202, {"id": customer_import.pk, "status": customer_import.status,
                        "rows_total": customer_import.rows_total})


@router.get("/imports/{int:import_id}", response={200: ImportOut, **ERRORS}, summary="An import's progress and counts")
def import_detail(request, import_id: int):
    return ImportOut.of(queries.import_get(import_id=import_id))


@router.get("/imports/{int:import_id}/rejected", response={**ERRORS}, summary="An import's rejected rows, as CSV",
            openapi_extra={"responses": {"200": {"description": "line, outcome, reason, then the row's original values",
                                                 "content": {"text/csv": {"schema": {"type": "string"}}}}}})
def import_rejected(request, import_id: int):
    customer_import = queries.import_get(import_id=import_id)
    response = StreamingHttpResponse(queries.report_csv(customer_import, kinds=(ImportIssue.Kind.REJECTED,)),
                                     content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{customer_import.pk}-rejected.csv"'
    return response
