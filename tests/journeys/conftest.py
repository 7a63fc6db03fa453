import pytest


@pytest.fixture(autouse=True)
def fresh_journey_caches():
    """Version graphs and compiled rules are cached per process by version id; a test
    database that reuses ids must not see the previous test's graphs."""
    from journeys import executor, receivers

    executor._version_graph.cache_clear()
    executor._normalised_rules.clear()
    receivers._cache.update(key=None, running=None)
    yield
