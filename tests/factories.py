import factory
from django.contrib.auth.models import Group, User
from django.utils import timezone

from customers.models import Customer, Event, Subscription, Topic


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery staple")

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        self.save()
        for name in extracted or ():
            self.groups.add(Group.objects.get(name=name))


class TopicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Topic
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"topic-{n}")
    name = factory.LazyAttribute(lambda t: t.key.replace("-", " ").title())


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"crm-{n:05d}")
    email = factory.Sequence(lambda n: f"customer{n}@example.com")
    phone = factory.Sequence(lambda n: f"+1415555{n % 10000:04d}")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    timezone = "Europe/Paris"
    lifecycle_stage = "customer"


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    customer = factory.SubFactory(CustomerFactory)
    topic = factory.SubFactory(TopicFactory)
    channel = "email"
    subscribed = True
    source = "test"


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    customer = factory.SubFactory(CustomerFactory)
    name = "order_completed"
    properties = factory.LazyFunction(lambda: {"total": 42})
    occurred_at = factory.LazyFunction(timezone.now)
    source = "api"


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "customers.Device"

    customer = factory.SubFactory(CustomerFactory)
    kind = "fcm"
    token = factory.Sequence(lambda n: f"fcm-token-{n:06d}")
    platform = "android"


def segment_history(customer, segment=None) -> list:
    """The customer's segment entries and exits as their timeline shows them, oldest first:
    events named segment.entered / segment.exited (of ``segment`` only, when given)."""
    from customers.queries import timeline_page

    customer_id = customer if isinstance(customer, int) else customer.pk
    segment_id = segment if segment is None or isinstance(segment, int) else segment.pk
    events = timeline_page(customer_id, limit=1000, category="segment").events
    return [e for e in reversed(events) if segment_id is None or e.properties["segment_id"] == segment_id]
