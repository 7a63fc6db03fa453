"""Reads of imports: the list, one import, its report as CSV rows."""

from __future__ import annotations

import csv
from collections.abc import Iterator

from django.http import Http404

from .models import CustomerImport, ImportIssue

LIST_SIZE = 50


def imports_recent(*, limit: int = LIST_SIZE) -> list[CustomerImport]:
    """The latest imports, with who started each (one query)."""
    return list(CustomerImport.objects.select_related("created_by").order_by("-created_at", "-id")[:limit])


def import_get(*, import_id: int) -> CustomerImport:
    """The import, or 404. Imports are shared by everyone who may import (marketers, admins);
    views check the role."""
    customer_import = CustomerImport.objects.filter(pk=import_id).first()
    if customer_import is None:
        raise Http404(f"No import has id {import_id}.")
    return customer_import


def issues_sample(customer_import: CustomerImport, *, kind: str, limit: int = 20) -> list[ImportIssue]:
    return list(customer_import.issues.filter(kind=kind).order_by("line")[:limit])


class _Echo:
    def write(self, value):
        return value


def report_csv(customer_import: CustomerImport, *, kinds: tuple[str, ...] = tuple(ImportIssue.Kind.values)) -> Iterator[str]:
    """The report as CSV text, streamed: line, outcome, reason, then the row's original values,
    in file order (rejected rows and rows applied with a warning, or the ``kinds`` asked for)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(["line", "outcome", "reason", *customer_import.columns])
    rows = (customer_import.issues.filter(kind__in=kinds).order_by("line", "kind")
            .values_list("line", "kind", "reason", "values").iterator(chunk_size=2000))
    for line, kind, reason, values in rows:
        yield writer.writerow([line, kind, reason, *(value if value is not None else "" for value in values)])
