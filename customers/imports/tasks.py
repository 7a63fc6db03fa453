"""django-q2 entry points of imports; each takes an id and is safe to run twice."""

from . import services


def run(import_id: int) -> None:
    services.import_run(import_id=import_id)
