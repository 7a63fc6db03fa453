"""Template filters of the support task pages."""

from django import template

from journeys.task_services import outcome_label as _outcome_label

register = template.Library()


@register.filter
def outcome_label(value) -> str:
    """A task outcome as a person reads it: "no_answer" → "No answer"."""
    return _outcome_label(str(value)) if value else ""
