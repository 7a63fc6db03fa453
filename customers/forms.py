"""Input validation for the support UI."""

from django import forms

from .models import ChannelKind, EventCategory, Topic


class CustomerSearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, strip=True)
    stage = forms.CharField(required=False, max_length=64)
    reachable = forms.ChoiceField(required=False, choices=[("", "Any channel"), *ChannelKind.choices])

    def filters(self) -> dict[str, str]:
        """The search arguments for ``customers_search``; an invalid value counts as unset."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        # A refused term (a NUL character, say) still searches, finding nobody rather than everyone.
        term = data.get("q", "") if "q" not in self.errors else str(self.data.get("q", ""))
        return {"term": term, "stage": data.get("stage", ""), "reachable": data.get("reachable", "")}


class TimelineFilterForm(forms.Form):
    category = forms.ChoiceField(required=False, choices=[("", "All kinds"), *EventCategory.choices])
    channel = forms.ChoiceField(required=False, choices=[("", "All channels"), *ChannelKind.choices])
    cursor = forms.CharField(required=False, max_length=200)

    def filters(self) -> dict[str, str]:
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        return {"category": data.get("category", ""), "channel": data.get("channel", "")}


class SubscriptionChangeForm(forms.Form):
    """One cell of the preference matrix, changed by staff on the customer's behalf."""

    topic = forms.ModelChoiceField(queryset=Topic.objects.all(), error_messages={"invalid_choice": "Unknown topic."})
    channel = forms.ChoiceField(choices=ChannelKind.choices)
    subscribed = forms.TypedChoiceField(
        choices=[("1", "Subscribed"), ("0", "Unsubscribed")],
        coerce=lambda value: value == "1",
        error_messages={"required": "Choose subscribed or unsubscribed."},
    )
    reason = forms.CharField(
        max_length=500,
        strip=True,
        error_messages={"required": "Say why you are changing this; the reason goes on the customer's timeline."},
    )


class NoteForm(forms.Form):
    text = forms.CharField(
        max_length=5000,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": "Write something before adding the note."},
    )
