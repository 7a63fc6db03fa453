"""Every write to campaigns and deliveries, by subject.

- ``compose``: creating and editing draft campaigns, their variants and content
- ``lifecycle``: launch, schedule, pause, resume, cancel, a staged send's winner, the minute tick
- ``messages``: one-off messages sent through the API
- ``delivery_events``: provider, tracking and conversion events recorded against deliveries

Each function runs in one transaction and publishes after commit. Views and the API parse
input into the dataclasses of ``compose`` and call these; nothing else writes.
"""
