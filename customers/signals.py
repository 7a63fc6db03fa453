"""The one signal every change to customers sends, after its transaction commits.

``customers_changed`` is sent by ``customers.timeline`` once per transaction that wrote
timeline rows or changed profiles, subscriptions, consent, channel status or devices,
whichever app wrote them. kwargs: ``change`` (``customers.timeline.Change``: the customer
ids, the event names written and for whom, the changed fields, the customers created).

Other apps (segments, campaigns, dashboards, journeys) listen to it; the customers app never
imports those apps, so dependencies keep pointing one way.
"""

from django.dispatch import Signal

customers_changed = Signal()
