"""Every write to customers, their preferences and their timeline, by subject.

- ``profiles``: customers themselves, their devices and support notes
- ``preferences``: subscriptions (topic × channel), consent, channel status
- ``ingestion``: events sent through the API
- ``api_keys``: the keys the API is called with

Each function runs in one transaction and writes its timeline rows through
``customers.timeline``, which tells every listener after commit. Callers pass validated,
normalised values (see ``customers.schemas``); anything only the database can check
(unknown ids, an email that belongs to someone else) raises ``core.errors.InputError``
before anything is written.
"""
