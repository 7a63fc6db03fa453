"""Input validation for the next-best-action catalog pages.

The form parses what the browser sent (numbers, dates, the eligibility rule as JSON);
the services decide what is acceptable, and their errors come back here: each on its
field, an eligibility rule's by their path in the rule.
"""

from __future__ import annotations

import json

from django import forms

from core.errors import InputError
from core.text import sentence

from .action_services import MAX_DAYS, MAX_OFFERS, MAX_PRIORITY, MAX_VALUE
from .models import Action

DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


class ActionForm(forms.Form):
    """Every field of an action; ``key`` only when it is created (journeys use it as a port)."""

    key = forms.CharField(max_length=64, strip=True, error_messages={"required": "Give the action a key."})
    name = forms.CharField(max_length=120, strip=True, error_messages={"required": "Give the action a name."})
    kind = forms.ChoiceField(choices=Action.Kind.choices, initial=Action.Kind.OFFER)
    description = forms.CharField(required=False, max_length=2000, strip=True, widget=forms.Textarea(attrs={"rows": 2}))
    value = forms.DecimalField(min_value=0, max_value=MAX_VALUE, decimal_places=2, initial=1)
    priority = forms.DecimalField(min_value=0, max_value=MAX_PRIORITY, decimal_places=2, initial=1)
    valid_from = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS)
    valid_until = forms.DateTimeField(required=False, input_formats=DATETIME_FORMATS)
    max_offers = forms.IntegerField(min_value=1, max_value=MAX_OFFERS, initial=3)
    window_days = forms.IntegerField(min_value=1, max_value=MAX_DAYS, initial=30)
    cooldown_after_accept_days = forms.IntegerField(min_value=0, max_value=MAX_DAYS, initial=30)
    cooldown_after_reject_days = forms.IntegerField(min_value=0, max_value=MAX_DAYS, initial=7)
    accept_event = forms.CharField(
        max_length=128, strip=True, error_messages={"required": "Name the event that counts as acceptance."}
    )
    reject_event = forms.CharField(required=False, max_length=128, strip=True)
    eligibility = forms.CharField(required=False, strip=True, widget=forms.Textarea)
    active = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, action: Action | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.action = action
        self.rule_errors: list[dict] = []
        if action is not None:
            del self.fields["key"]

    def clean_eligibility(self):
        text = self.cleaned_data.get("eligibility", "")
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            message = f"The eligibility rule is not valid JSON ({exc})."
            self.rule_errors.append({"path": "eligibility", "message": message})
            raise forms.ValidationError(message) from None

    def service_values(self) -> dict:
        """The cleaned data as the services take it (everything but the key)."""
        return {name: value for name, value in self.cleaned_data.items() if name != "key"}

    def add_service_errors(self, exc: InputError) -> None:
        """Show what the service refused: rule paths beside the rule, the rest on their field."""
        for error in exc.errors:
            if error.field == "eligibility" or error.field.startswith(("eligibility.", "eligibility[")):
                self.rule_errors.append({"path": error.field, "message": error.message})
            elif error.field in self.fields:
                self.add_error(error.field, sentence(error.message))
            else:
                self.add_error(None, sentence(error.message))
        if self.rule_errors and "eligibility" not in self.errors:
            self.add_error("eligibility", "The eligibility rule is not valid; see the problems listed above it.")
