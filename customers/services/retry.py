"""Running a whole transaction again when a concurrent one got there first."""

from __future__ import annotations

import logging
import time

from django.db import DatabaseError

logger = logging.getLogger(__name__)

# Errors that mean a concurrent transaction got there first: a deadlock, a serialization
# failure, or a unique key (an external id, an email) it inserted and committed while we
# were deciding to insert the same one. Run again from the start, the same work sees the
# other transaction's rows and succeeds.
LOST_RACE_SQLSTATES = frozenset({"40P01", "40001", "23505"})


def retry_lost_races(write, /, **kwargs):
    """Call ``write(**kwargs)``, which runs one whole transaction, again if it lost a race.

    ``write`` must decide everything inside its transaction (what exists, what to create),
    so that a second run sees what the winner committed. Gives up after three tries.
    """
    for attempt in range(3):
        try:
            return write(**kwargs)
        except DatabaseError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if sqlstate not in LOST_RACE_SQLSTATES or attempt == 2:
                raise
            logger.warning("%s retried after %s", write.__name__, sqlstate)
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
