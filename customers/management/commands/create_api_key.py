from django.core.management.base import BaseCommand, CommandError

from customers.services.api_keys import api_key_create


class Command(BaseCommand):
    help = "Create an API key and print it once, alone on stdout (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="What the key is for, e.g. 'web-tracking' or 'crm-sync'")

    def handle(self, *args, name: str, **options):
        name = name.strip()
        if not name or len(name) > 120:
            raise CommandError("Give the key a name of 1 to 120 characters, e.g. create_api_key crm-sync")
        key, raw = api_key_create(name=name)
        self.stderr.write(f"Created API key '{key.name}'. Copy it now: it is not stored and cannot be shown again.")
        self.stdout.write(raw)
