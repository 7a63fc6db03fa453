from django import template

register = template.Library()


@register.filter
def rate(row, metric: str):
    """``row.rate(metric)``: the share of sent messages that reached ``metric``."""
    return row.rate(metric)


@register.filter
def percent(value) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f}%"
