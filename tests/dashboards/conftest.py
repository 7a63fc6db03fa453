from tests.campaigns.conftest import audience  # noqa: F401  (the same audience as the campaign tests)
