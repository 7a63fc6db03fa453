from django.core.management.base import BaseCommand, CommandError

from customers.models import ApiKey
from customers.services.api_keys import api_key_create


class Command(BaseCommand):
    help = "Create an API key or a source write key and print it once, alone on stdout (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="What the key is for, e.g. 'web-tracking' or 'crm-sync'")
        parser.add_argument(
            "--scope", choices=ApiKey.Scope.values, default=ApiKey.Scope.API,
            help="api: a Bearer key for the JSON API (/api/v1/); source: a write key for Segment and "
                 "RudderStack SDKs (/v1/ only, safe to ship in web pages and apps)",
        )

    def handle(self, *args, name: str, scope: str, **options):
        name = name.strip()
        if not name or len(name) > 120:
            raise CommandError("Give the key a name of 1 to 120 characters, e.g. create_api_key crm-sync")
        key, raw = api_key_create(name=name, scope=scope)
        what = "write key" if key.scope == ApiKey.Scope.SOURCE else "API key"
        self.stderr.write(f"Created {what} '{key.name}'. Copy it now: it is not stored and cannot be shown again.")
        self.stdout.write(raw)
