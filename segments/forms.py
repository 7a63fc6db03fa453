"""Input validation for the segments UI."""

from __future__ import annotations

import csv
import io
import json

from django import forms
from django.db.models import Q

from customers.models import Customer
from core.errors import InputError
from core.text import sentence

from .models import Segment

MAX_IMPORT_ROWS = 10_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024


class SegmentForm(forms.Form):
    """Name, description, kind (new segments only) and the rule tree as JSON text.

    Rule problems are kept apart from field errors, as ``rule_errors`` ({path, message}),
    so the builder can show each one next to the condition it is about.
    """

    name = forms.CharField(
        max_length=120, strip=True, error_messages={"required": "Give the segment a name."}
    )
    description = forms.CharField(required=False, max_length=2000, strip=True, widget=forms.Textarea(attrs={"rows": 2}))
    kind = forms.ChoiceField(choices=Segment.Kind.choices, initial=Segment.Kind.DYNAMIC)
    rules = forms.CharField(required=False, strip=True, widget=forms.Textarea)

    def __init__(self, *args, segment: Segment | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.segment = segment
        self.rule_errors: list[dict] = []
        if segment is not None:
            del self.fields["kind"]

    @property
    def is_dynamic(self) -> bool:
        if self.segment is not None:
            return self.segment.is_dynamic
        kind = self.data.get("kind") if self.is_bound else self.initial.get("kind")
        return kind != Segment.Kind.STATIC

    def clean_rules(self):
        if not self.is_dynamic:
            return None
        text = self.cleaned_data.get("rules", "")
        if not text:
            self.rule_errors.append({"path": "rules", "message": "Add at least one condition."})
            raise forms.ValidationError("Add at least one condition.")
        try:
            return json.loads(text)
        except ValueError as exc:
            message = f"The rules are not valid JSON ({exc})."
            self.rule_errors.append({"path": "rules", "message": message})
            raise forms.ValidationError(message) from None

    def add_service_errors(self, exc: InputError) -> None:
        """Show what the service refused: rule paths beside the rules, the rest on their field."""
        for error in exc.errors:
            if error.field == "rules" or error.field.startswith(("rules.", "rules[")):
                self.rule_errors.append({"path": error.field, "message": error.message})
            elif error.field in self.fields:
                self.add_error(error.field, sentence(error.message))
            else:
                self.add_error(None, sentence(error.message))
        if self.rule_errors and "rules" not in self.errors:
            self.add_error("rules", exc.message)


class MembersImportForm(forms.Form):
    """Customers to add to a static segment: pasted lines and/or a CSV file.

    A line (or CSV cell) with an ``@`` is an email, anything else an external id. A CSV
    file is read from its ``email`` and ``external_id`` columns when its first row names
    them, otherwise from its first column.
    """

    pasted = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}))
    file = forms.FileField(required=False)

    def clean_file(self):
        upload = self.cleaned_data.get("file")
        if upload is None:
            return None
        if upload.size > MAX_IMPORT_BYTES:
            raise forms.ValidationError(f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB.")
        raw = upload.read()
        for encoding in ("utf-8-sig", "cp1252"):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError:
                continue
        raise forms.ValidationError("The file is not a text CSV file.")

    def clean(self):
        data = super().clean()
        values = [line.strip() for line in (data.get("pasted") or "").splitlines()]
        if data.get("file"):
            try:
                values += _csv_values(data["file"])
            except csv.Error as exc:
                self.add_error("file", f"The file could not be read as CSV ({exc}).")
                return data
        values = list(dict.fromkeys(value for value in values if value))
        if not values and not self.errors:
            raise forms.ValidationError("Paste emails or external ids, one per line, or choose a CSV file.")
        if len(values) > MAX_IMPORT_ROWS:
            raise forms.ValidationError(f"Import at most {MAX_IMPORT_ROWS:,} customers at a time.")
        data["emails"] = [value for value in values if "@" in value]
        data["external_ids"] = [value for value in values if "@" not in value]
        return data


HEADER_NAMES = {"email": "email", "e_mail": "email", "external_id": "external_id", "externalid": "external_id"}


def _csv_values(text: str) -> list[str]:
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [HEADER_NAMES.get(cell.strip().lower().replace(" ", "_").replace("-", "_")) for cell in rows[0]]
    if not any(header):
        return [row[0].strip() for row in rows if row]
    columns = [index for index, name in enumerate(header) if name]
    values = []
    for row in rows[1:]:
        # A row names its customer by the first of its email / external_id cells that is filled.
        for index in columns:
            if index < len(row) and row[index].strip():
                values.append(row[index].strip())
                break
    return values


class CustomerLookupForm(forms.Form):
    """A customer named by id, email or external id, for "why is this customer (not) in it?"."""

    customer = forms.CharField(
        max_length=254, strip=True, error_messages={"required": "Enter a customer id, email or external id."}
    )

    def clean_customer(self) -> Customer:
        term = self.cleaned_data["customer"]
        query = Q(external_id=term) | Q(email=term.lower())
        if term.isdigit() and len(term) < 19:
            query |= Q(pk=int(term))
        matches = list(Customer.objects.filter(query).order_by("pk")[:2])
        if not matches:
            raise forms.ValidationError(f"No customer has the id, email or external id “{term}”.")
        # An exact id wins over an external id or email that happens to be the same digits.
        exact = [customer for customer in matches if str(customer.pk) == term]
        return exact[0] if exact else matches[0]
