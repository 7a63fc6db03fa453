from django.core.management.base import BaseCommand

from customers.models import Customer
from segments import services
from segments.models import Segment

DEMO_SEGMENTS = [
    ("Re-engage", "Newsletter subscribers who have not opened an email in three weeks", {
        "all": [
            {"event": "message.opened", "where": [{"prop": "channel", "op": "eq", "value": "email"}],
             "within_days": 21, "count": {"op": "eq", "value": 0}},
            {"subscribed": {"topic": "newsletter", "channel": "email"}},
        ]
    }),
    ("Recent buyers", "Completed an order in the last 30 days", {"event": "order_completed", "within_days": 30}),
    ("Experts on paid plans", "Experts on the pro or team plan", {
        "all": [{"attr": "lifecycle_stage", "op": "eq", "value": "expert"},
                {"attr": "attributes.plan", "op": "in", "value": ["pro", "team"]}]
    }),
    ("SMS coupon fans", "Subscribed to coupons by SMS and reachable by SMS", {
        "all": [{"subscribed": {"topic": "coupons", "channel": "sms"}}, {"reachable": "sms"}]
    }),
    ("Churn risk", "Churned, or customers without an order in 45 days", {
        "any": [{"attr": "lifecycle_stage", "op": "eq", "value": "churned"},
                {"all": [{"attr": "lifecycle_stage", "op": "eq", "value": "customer"},
                         {"not": {"event": "order_completed", "within_days": 45}}]}]
    }),
]


class Command(BaseCommand):
    help = "Define the demo segments (and a static 'Beta testers' list) through the segment services."

    def add_arguments(self, parser):
        parser.add_argument("--if-empty", action="store_true", help="do nothing when any segment exists")

    def handle(self, *args, if_empty: bool, **options):
        if if_empty and Segment.objects.exists():
            return
        for name, description, rules in DEMO_SEGMENTS:
            if not Segment.objects.filter(name=name).exists():
                segment = services.segment_create(name=name, description=description, rules=rules, actor="demo")
                self.stdout.write(f"Segment '{name}': {segment.member_count:,} members")
        if not Segment.objects.filter(name="Beta testers").exists():
            beta = services.segment_create(
                name="Beta testers", description="Hand-picked for early features", static=True, actor="demo"
            )
            ids = list(Customer.objects.filter(lifecycle_stage="expert").order_by("id").values_list("id", flat=True)[:25])
            services.static_members_change(segment=beta, add=True, actor="demo", ids=ids)
            self.stdout.write(f"Segment 'Beta testers': {len(ids)} members (static)")
