"""django-q2 entry points; each is safe to run twice."""

from . import computation, services


def sweep() -> None:
    services.segments_sweep()


def refresh(customer_ids: list[int], segment_ids: list[int]) -> None:
    services.segments_refresh_for(customer_ids=set(customer_ids), segment_ids=segment_ids)


def recompute(segment_id: int) -> None:
    services.segment_recompute(segment_id=segment_id)


def compute(chain: list[list[int]]) -> None:
    """Full computations requested by a create, an edit or "recompute now"."""
    computation.segments_compute(chain=chain)
