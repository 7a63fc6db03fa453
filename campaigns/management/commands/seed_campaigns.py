"""Demo campaigns on the demo segments: one sending live with an A/B and channel test,
one newsletter, one draft. Needs seed_demo and seed_segments first."""

from django.core.management.base import BaseCommand, CommandError

from campaigns.services.compose import CampaignInput, VariantInput, campaign_create
from campaigns.services.lifecycle import campaign_launch
from campaigns.models import Campaign
from segments.models import Segment

EMAIL_HTML = """<h1>{{ first_name|default:"Hello" }}, {{ headline }}</h1>
<p>{{ intro }}</p>
<p><a href="https://shop.example.com/{{ path }}">{{ cta }}</a></p>"""


def email(subject, headline, intro, cta, path):
    html = EMAIL_HTML.replace("{{ headline }}", headline).replace("{{ intro }}", intro)
    html = html.replace("{{ cta }}", cta).replace("{{ path }}", path)
    return {"subject": subject, "preheader": intro[:80], "html": html, "text": ""}


class Command(BaseCommand):
    help = "Create demo campaigns (and launch two of them) so the demo has something to watch."

    def add_arguments(self, parser):
        parser.add_argument("--if-empty", action="store_true", help="do nothing when any campaign exists")

    def handle(self, *args, if_empty=False, **options):
        if if_empty and Campaign.objects.exists():
            return
        segments = {s.name: s.pk for s in Segment.objects.all()}
        needed = ["Recent buyers", "SMS coupon fans", "Re-engage", "Churn risk"]
        missing = [name for name in needed if name not in segments]
        if missing:
            raise CommandError(f"run seed_segments first; missing segments: {', '.join(missing)}")
        coupons = campaign_create(
            data=CampaignInput(
                name="Black Friday coupons",
                topic="coupons",
                channels=["email", "sms"],
                strategy="preferred",
                segment_ids=[segments["Recent buyers"], segments["SMS coupon fans"]],
                exclude_segment_ids=[segments["Churn risk"]],
                variants=[
                    VariantInput(key="A", name="20% off", weight=1, content={
                        "email": email("{{ first_name|default:'Hi' }}, 20% off everything", "20% off everything",
                                       "Black Friday starts now: 20% off the whole shop until Monday.", "Shop the sale", "black-friday"),
                        "sms": {"body": "{{ first_name|default:'Hi' }}, Black Friday: 20% off everything until Monday. shop.example.com/bf"},
                    }),
                    VariantInput(key="B", name="Free shipping", weight=1, content={
                        "email": email("Free shipping + 20% off, {{ first_name|default:'friend' }}", "free shipping and 20% off",
                                       "Our biggest sale of the year, with free shipping on every order.", "Get the deal", "black-friday?v=b"),
                        "sms": {"body": "Black Friday: 20% off + free shipping for you, {{ first_name|default:'friend' }}. shop.example.com/bf"},
                    }),
                ],
                goal_event="order_completed",
                goal_within_hours=48,
                throttle_per_minute=300,
                test_percent=30,
                test_metric="conversion",
                test_channels=True,
            ),
            actor="demo",
        )
        newsletter = campaign_create(
            data=CampaignInput(
                name="November newsletter",
                topic="newsletter",
                channels=["email"],
                segment_ids=[segments["Re-engage"]],
                variants=[VariantInput(key="A", content={"email": email(
                    "What's new in November", "here is what's new",
                    "Guides, stories and the features we shipped this month.", "Read the newsletter", "newsletter/november")})],
                goal_event="order_completed",
                goal_within_hours=72,
                throttle_per_minute=200,
            ),
            actor="demo",
        )
        campaign_create(
            data=CampaignInput(
                name="Spring launch (draft)",
                topic="product-updates",
                channels=["push", "email"],
                strategy="preferred",
                segment_ids=[segments["Recent buyers"]],
                variants=[VariantInput(key="A", content={
                    "push": {"title": "Something new is coming", "body": "Be the first to try it, {{ first_name|default:'friend' }}.", "link": "shop://spring"},
                    "email": email("Something new is coming", "something new is coming",
                                   "A first look at what we have been building.", "Take a look", "spring"),
                })],
            ),
            actor="demo",
        )
        for campaign in (coupons, newsletter):
            campaign_launch(campaign=campaign, actor="demo")
        self.stdout.write("Demo campaigns: 2 launched, 1 draft.")
