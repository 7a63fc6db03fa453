from django.core.management.base import BaseCommand

from journeys import demo
from journeys.models import Journey


class Command(BaseCommand):
    help = "Create the demo journeys and next-best-action catalog, publish them and replay recent behaviour."

    def add_arguments(self, parser):
        parser.add_argument("--if-empty", action="store_true", help="do nothing when any journey exists")

    def handle(self, *args, if_empty=False, **options):
        if if_empty and Journey.objects.exists():
            return
        demo.seed(stdout=self.stdout)
