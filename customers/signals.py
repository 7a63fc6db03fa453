"""Signals the customers app sends after a transaction commits.

Other apps (segments, journeys, campaigns) listen to them; the customers app never imports
those apps, so dependencies keep pointing one way.
"""

from django.dispatch import Signal

# Sent after events were stored. kwargs: customer_ids (set[int]), names (set[str]).
events_ingested = Signal()

# Sent after profiles, subscriptions or consent changed. kwargs: customer_ids (set[int]),
# fields (set[str]: profile field names, "attributes.<key>", "subscriptions", "consent",
# "devices", "channel_status"), created (bool: the customers are new, so any rule may match).
customers_changed = Signal()
