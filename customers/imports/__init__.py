"""Customer import from CSV: the file is staged in the database with COPY at upload, then
validated and applied set-based in the background, with a per-row report.

- ``models``: the import, its report rows
- ``mapping``: what each column means (checked, and guessed from the header)
- ``staging``: the upload, streamed into a staging table
- ``validation``: the typed work table, every rejected row with its reason
- ``apply``: creating and updating customers, subscriptions and consent, one chunk at a time
- ``services``: every write (upload, start, run, discard); ``queries``: reads
"""
