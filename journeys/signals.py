"""``journeys_moved``: sent after commit when customers entered, moved in or left journeys
(kwargs ``journey_ids``); the live map listens."""

from django.dispatch import Signal

journeys_moved = Signal()
