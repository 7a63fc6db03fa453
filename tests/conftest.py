import pytest

from customers import services
from customers.roles import ADMIN, MARKETER, SUPPORT
from tests.factories import CustomerFactory, TopicFactory, UserFactory

PASSWORD = "correct horse battery staple"


@pytest.fixture
def marketer(db):
    return UserFactory(username="marketer", roles=[MARKETER])


@pytest.fixture
def support(db):
    return UserFactory(username="support", roles=[SUPPORT])


@pytest.fixture
def admin_user(db):
    return UserFactory(username="admin", roles=[ADMIN], is_staff=True)


@pytest.fixture
def outsider(db):
    """Signed in, but holds no role: refused everywhere."""
    return UserFactory(username="outsider")


@pytest.fixture
def topics(db):
    return {
        "newsletter": TopicFactory(key="newsletter", name="Newsletter"),
        "coupons": TopicFactory(key="coupons", name="Coupons"),
        "product-updates": TopicFactory(key="product-updates", name="Product updates"),
        "alerts": TopicFactory(key="alerts", name="Alerts", is_transactional=True),
    }


@pytest.fixture
def customer(db):
    return CustomerFactory(email="ada@example.com", first_name="Ada", last_name="Lovelace", external_id="crm-ada")


@pytest.fixture
def api_key(db):
    _, raw = services.api_key_create(name="tests")
    return raw


@pytest.fixture
def api(client, api_key):
    """A JSON client for /api/v1 with a valid bearer key."""

    class Api:
        headers = {"Authorization": f"Bearer {api_key}"}

        def get(self, path, **params):
            return client.get(f"/api/v1{path}", params, headers=self.headers)

        def post(self, path, data=None, *, raw=None):
            import json

            body = raw if raw is not None else json.dumps(data)
            return client.post(f"/api/v1{path}", body, content_type="application/json", headers=self.headers)

        def put(self, path, data):
            import json

            return client.put(f"/api/v1{path}", json.dumps(data), content_type="application/json", headers=self.headers)

        def delete(self, path, data=None):
            import json

            return client.delete(
                f"/api/v1{path}", json.dumps(data or {}), content_type="application/json", headers=self.headers
            )

    return Api()


@pytest.fixture(scope="session", autouse=True)
def channel_layer_on_test_database(django_db_setup, django_db_blocker):
    """channels-postgres keeps its own copy of the database settings: point it at the test database."""
    from channels.layers import channel_layers
    from django.conf import settings
    from django.db import connection

    config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
    if "NAME" in config:
        config["NAME"] = connection.settings_dict["NAME"]
        channel_layers.backends.clear()
    yield
    # The layer keeps LISTEN connections open; close them so the test database can be dropped.
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
