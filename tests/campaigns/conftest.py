import pytest

from campaigns.services.compose import CampaignInput, VariantInput, campaign_create
from customers.models import ChannelKind
from segments.services import segment_create, static_members_change
from tests.factories import CustomerFactory, SubscriptionFactory


@pytest.fixture
def audience(db, topics):
    """Six customers in a static segment, with different preferences for the newsletter.

    - ada, bob: newsletter by email; ada also by SMS
    - cyd: newsletter by SMS only
    - dee: not subscribed at all
    - eve: newsletter by email, but her email bounced before
    - fay: newsletter by email, no phone
    """
    newsletter = topics["newsletter"]
    people = {
        name: CustomerFactory(email=f"{name}@example.com", first_name=name.title(), timezone="UTC")
        for name in ("ada", "bob", "cyd", "dee", "eve", "fay")
    }
    people["fay"].phone = ""
    people["fay"].save()
    for name, channels in {"ada": ["email", "sms"], "bob": ["email"], "cyd": ["sms"], "eve": ["email"], "fay": ["email"]}.items():
        for channel in channels:
            SubscriptionFactory(customer=people[name], topic=newsletter, channel=channel)
    from customers.services.preferences import channel_status_set

    channel_status_set(customer_ids={people["eve"].pk}, channel=ChannelKind.EMAIL, status="bounced",
                       reason="550 no such user", source="test")
    segment = segment_create(name="Everyone", static=True, actor="test")
    static_members_change(segment=segment, add=True, ids=[p.pk for p in people.values()], actor="test")
    return {"segment": segment, "people": people, "topic": newsletter}


def make_campaign(audience, *, channels=("email", "sms"), strategy="all", variants=None, **extra):
    content = {
        "email": {"subject": "Hello {{ first_name|default:'there' }}", "html": "<p>Hi {{ first_name }}</p><a href='https://shop.example.com/sale'>Sale</a>", "text": ""},
        "sms": {"body": "Hi {{ first_name }}, sale today"},
        "whatsapp": {"template": "sale_v1", "variables": {"1": "{{ first_name }}"}},
        "voice": {"text": "Hello {{ first_name }}"},
        "push": {"title": "Sale", "body": "Hi {{ first_name }}", "link": "app://sale"},
    }
    variants = variants or [VariantInput(key="A", content={c: content[c] for c in channels})]
    data = CampaignInput(
        name=extra.pop("name", "Winter sale"), topic=audience["topic"].key, channels=list(channels),
        segment_ids=[audience["segment"].pk], strategy=strategy, variants=variants, **extra,
    )
    return campaign_create(data=data, actor="test")
