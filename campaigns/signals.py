"""Signals the campaigns app sends after a transaction commits."""

from django.dispatch import Signal

# Counters changed. kwargs: campaign_ids (set[int]), journey_ids (set[int]).
# Dashboards listen and push the new figures to the pages that show them.
counters_changed = Signal()
