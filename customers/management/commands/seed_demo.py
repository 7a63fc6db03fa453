"""``python manage.py seed_demo [--if-empty] [--customers N]``: the demo data set.

Customers across continents with varied channels, topics, a preference matrix with some
explicit unsubscribes, a consent ledger (and its current state), about 13 timeline events
per customer over the last 60 days, the three demo logins and one API key.

Rows are generated in Python from a seeded random generator and written with COPY; the
derived parts (current consent, last seen) are computed by SQL from what was written.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

import phonenumbers
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from customers import timeline
from customers.models import (
    ApiKey,
    Consent,
    ConsentState,
    Customer,
    Device,
    Event,
    Subscription,
    Topic,
)
from customers.roles import ADMIN, MARKETER, SUPPORT
from customers.services.api_keys import api_key_create
from customers.validation import InvalidValue, normalize_phone

DEMO_PASSWORD = "switchboard-demo"
DEMO_USERS = (
    # username, role, is_superuser
    ("marketer", MARKETER, False),
    ("support", SUPPORT, False),
    ("admin", ADMIN, True),
)
DEMO_API_KEY_NAME = "demo"
ACTOR = "seed_demo"
WINDOW_DAYS = 60

TOPICS = (
    # key, name, description, transactional
    ("newsletter", "Newsletter", "The fortnightly newsletter: stories, guides and what is new.", False),
    ("coupons", "Coupons", "Discount codes and flash sales.", False),
    ("product-updates", "Product updates", "New features and releases.", False),
    ("alerts", "Alerts", "Order, delivery and account alerts; sent to everyone who can be reached.", True),
)

# Given names and family names by language, so that names fit the country.
NAMES = {
    "en": (
        "James Olivia Liam Emma Noah Ava Ethan Sophia Mason Isabella Lucas Mia Harper Jack Grace Henry".split(),
        "Smith Johnson Williams Brown Jones Miller Davis Wilson Taylor Clark Walker Wright Hughes Evans".split(),
    ),
    "es": (
        "Lucía Mateo Sofía Santiago Valentina Diego Camila Javier Martina Alejandro Elena Pablo".split(),
        "García Martínez López Hernández González Rodríguez Pérez Sánchez Ramírez Torres Flores".split(),
    ),
    "pt": (
        "Ana João Beatriz Pedro Mariana Gabriel Larissa Rafael Juliana Thiago Camila Lucas".split(),
        "Silva Santos Oliveira Souza Pereira Costa Ferreira Almeida Carvalho Ribeiro Gomes".split(),
    ),
    "fr": (
        "Camille Louis Chloé Hugo Léa Jules Manon Gabriel Inès Arthur Zoé Paul".split(),
        "Martin Bernard Dubois Thomas Robert Richard Petit Durand Leroy Moreau Lefèvre".split(),
    ),
    "de": (
        "Lena Paul Mia Felix Hannah Jonas Emilia Leon Lea Finn Clara Maximilian".split(),
        "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Hoffmann Schulz".split(),
    ),
    "it": (
        "Giulia Francesco Sofia Alessandro Aurora Lorenzo Chiara Matteo Martina Andrea".split(),
        "Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco".split(),
    ),
    "nl": ("Emma Daan Julia Sem Tess Lucas Sophie Finn Anna Milan".split(),
           ("de Jong", "Jansen", "de Vries", "van Dijk", "Bakker", "Visser", "Smit", "Meijer")),
    "sv": ("Alice Elias Maja William Elsa Oscar Astrid Hugo Ebba Nils".split(),
           "Andersson Johansson Karlsson Nilsson Eriksson Larsson Olsson Persson".split()),
    "pl": ("Zuzanna Jakub Julia Antoni Maja Jan Hanna Szymon Lena Filip".split(),
           "Nowak Kowalski Wiśniewski Wójcik Kowalczyk Kamiński Lewandowski Zieliński".split()),
    "hi": ("Aarav Ananya Vivaan Diya Aditya Isha Arjun Priya Rohan Kavya Sai Meera".split(),
           "Sharma Patel Singh Kumar Gupta Reddy Iyer Nair Mehta Das".split()),
    "ja": ("Haruto Yui Sota Hina Yuto Sakura Riku Aoi Ren Mei".split(),
           "Sato Suzuki Takahashi Tanaka Watanabe Ito Yamamoto Nakamura Kobayashi".split()),
    "zh": ("Wei Jia Hui Ming Xin Yi Jun Ling Hao Mei".split(),
           "Tan Lim Lee Ng Wong Chen Goh Chua Teo Koh".split()),
    "af": ("Thabo Naledi Sipho Lerato Pieter Anika Kagiso Zanele Johan Ayanda".split(),
           ("Nkosi", "Dlamini", "van der Merwe", "Botha", "Mokoena", "Naidoo", "Khumalo", "Pretorius")),
    "yo": ("Chinedu Ngozi Tunde Aisha Emeka Funke Ibrahim Amaka Segun Zainab".split(),
           "Okafor Adeyemi Bello Eze Okonkwo Abubakar Balogun Nwosu".split()),
    "sw": ("Wanjiru Otieno Achieng Kamau Njeri Mwangi Akinyi Kiptoo Nyambura Baraka".split(),
           "Kariuki Odhiambo Mutua Wambui Kipchoge Ochieng Njoroge Chebet".split()),
    "ar": ("Omar Nour Ahmed Salma Youssef Mariam Karim Laila Hassan Farida".split(),
           "Hassan Mahmoud Ibrahim Mostafa Saleh Fathy Abdelrahman Gamal".split()),
}

class Country(NamedTuple):
    code: str
    weight: int
    locale: str
    names: str  # key of NAMES
    currency: str
    per_usd: float  # rough price of one US dollar, for local prices
    zones: tuple[str, ...]  # IANA time zones


COUNTRIES = (
    Country("US", 22, "en-US", "en", "USD", 1, (
        "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Anchorage",
        "Pacific/Honolulu",
    )),
    Country("CA", 5, "en-CA", "en", "CAD", 1.35, ("America/Toronto", "America/Vancouver", "America/Halifax")),
    Country("MX", 5, "es-MX", "es", "MXN", 17, ("America/Mexico_City", "America/Tijuana")),
    Country("BR", 6, "pt-BR", "pt", "BRL", 5, ("America/Sao_Paulo", "America/Manaus")),
    Country("AR", 2, "es-AR", "es", "USD", 1, ("America/Argentina/Buenos_Aires",)),
    Country("GB", 9, "en-GB", "en", "GBP", 0.8, ("Europe/London",)),
    Country("FR", 7, "fr-FR", "fr", "EUR", 0.92, ("Europe/Paris",)),
    Country("DE", 7, "de-DE", "de", "EUR", 0.92, ("Europe/Berlin",)),
    Country("ES", 4, "es-ES", "es", "EUR", 0.92, ("Europe/Madrid", "Atlantic/Canary")),
    Country("IT", 4, "it-IT", "it", "EUR", 0.92, ("Europe/Rome",)),
    Country("NL", 3, "nl-NL", "nl", "EUR", 0.92, ("Europe/Amsterdam",)),
    Country("SE", 2, "sv-SE", "sv", "SEK", 10.5, ("Europe/Stockholm",)),
    Country("PL", 2, "pl-PL", "pl", "PLN", 4, ("Europe/Warsaw",)),
    Country("IN", 6, "en-IN", "hi", "INR", 83, ("Asia/Kolkata",)),
    Country("JP", 3, "ja-JP", "ja", "JPY", 150, ("Asia/Tokyo",)),
    Country("SG", 2, "en-SG", "zh", "SGD", 1.35, ("Asia/Singapore",)),
    Country("AU", 4, "en-AU", "en", "AUD", 1.5, (
        "Australia/Sydney", "Australia/Melbourne", "Australia/Perth", "Australia/Brisbane",
    )),
    Country("NZ", 1, "en-NZ", "en", "NZD", 1.65, ("Pacific/Auckland",)),
    Country("ZA", 2, "en-ZA", "af", "ZAR", 18.5, ("Africa/Johannesburg",)),
    Country("NG", 2, "en-NG", "yo", "NGN", 1500, ("Africa/Lagos",)),
    Country("KE", 1, "en-KE", "sw", "KES", 130, ("Africa/Nairobi",)),
    Country("EG", 1, "ar-EG", "ar", "EGP", 48, ("Africa/Cairo",)),
)

STAGES = (("lead", 22), ("prospect", 18), ("customer", 38), ("expert", 10), ("churned", 12))
PLANS = {
    "lead": (("free", 95), ("pro", 5), ("team", 0)),
    "prospect": (("free", 80), ("pro", 15), ("team", 5)),
    "customer": (("free", 30), ("pro", 50), ("team", 20)),
    "expert": (("free", 0), ("pro", 40), ("team", 60)),
    "churned": (("free", 70), ("pro", 25), ("team", 5)),
}
# Browsing sessions over the 60 days, on average, by stage.
SESSIONS = {"lead": 1.6, "prospect": 2.4, "customer": 3.2, "expert": 5.5, "churned": 1.2}

PRODUCTS = (
    ("SKU-1001", "Trail running shoes", 120, "shoes"),
    ("SKU-1002", "Merino base layer", 75, "apparel"),
    ("SKU-1003", "Waterproof jacket", 210, "apparel"),
    ("SKU-1004", "Insulated bottle", 32, "accessories"),
    ("SKU-1005", "Headlamp", 45, "accessories"),
    ("SKU-1006", "Day pack 22L", 95, "bags"),
    ("SKU-1007", "Hiking socks (3 pairs)", 24, "apparel"),
    ("SKU-1008", "Trekking poles", 110, "accessories"),
    ("SKU-1009", "Camp stove", 60, "camping"),
    ("SKU-1010", "Ultralight tent", 420, "camping"),
    ("SKU-1011", "Sleeping bag", 260, "camping"),
    ("SKU-1012", "Gift card", 50, "gift"),
)
PAGES = (
    ("/", "Home"), ("/collections/new", "New arrivals"), ("/collections/sale", "Sale"),
    ("/blog/packing-list", "The ultimate packing list"), ("/help/shipping", "Shipping"), ("/account", "Your account"),
)
REFERRERS = ("", "", "https://www.google.com/", "https://news.example.org/", "https://social.example.com/")
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
)
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")

# campaign id, topic, channel, days ago
CAMPAIGNS = (
    ("newsletter-01", "newsletter", "email", 56),
    ("newsletter-02", "newsletter", "email", 42),
    ("newsletter-03", "newsletter", "email", 28),
    ("newsletter-04", "newsletter", "email", 14),
    ("spring-sale-email", "coupons", "email", 38),
    ("spring-sale-sms", "coupons", "sms", 38),
    ("flash-coupon-whatsapp", "coupons", "whatsapp", 9),
    ("app-release-4-2", "product-updates", "push", 20),
    ("feature-digest", "product-updates", "email", 5),
)
OPEN_RATE = {"email": 0.32, "push": 0.18, "whatsapp": 0.55, "sms": 0.0}
# sms is not opened (nothing reports it), only clicked; others click after opening.
CLICK_RATE = {"email": 0.22, "push": 0.30, "whatsapp": 0.25, "sms": 0.07}

CONSENT_WORDING = {
    "email": "Yes, send me news and offers by email. I can unsubscribe at any time.",
    "sms": "Yes, text me offers. Msg & data rates may apply. Reply STOP to cancel.",
    "whatsapp": "Yes, message me on WhatsApp about orders and offers.",
    "push": "Allow notifications about your orders and new arrivals?",
}


@dataclass
class Person:
    id: int
    country: Country
    stage: str
    created_at: datetime
    email: str
    phone: str
    device: str = ""  # "", "fcm" or "webpush"
    platform: str = ""  # of the device: ios, android or web
    subscribed: set = field(default_factory=set)  # (topic key, channel)


class Command(BaseCommand):
    help = "Load the demo data set: customers, preferences, consent, events, demo logins and an API key."

    def add_arguments(self, parser):
        parser.add_argument("--if-empty", action="store_true", help="do nothing when any customer exists")
        parser.add_argument("--customers", type=int, default=3000, help="how many customers (default 3000)")
        parser.add_argument("--seed", type=int, default=2025, help="random seed (same seed, same data)")

    def handle(self, *args, if_empty: bool, customers: int, seed: int, **options):
        if customers < 1:
            raise CommandError("--customers must be at least 1")
        if if_empty and Customer.objects.exists():
            self.stdout.write("Demo data not loaded: the database already has customers.")
            self._print_logins()
            return
        started = time.monotonic()
        with transaction.atomic():
            users = self._users()
            counts = Generator(random.Random(seed), timezone.now()).write(customers)
            # As the services do for new customers: whatever keeps segments true hears of them.
            created_ids = set(counts.pop("ids"))
            timeline.changed(customer_ids=created_ids, created=created_ids)
            raw_key = None
            if not ApiKey.objects.filter(name=DEMO_API_KEY_NAME).exists():
                _, raw_key = api_key_create(name=DEMO_API_KEY_NAME, created_by=users.get("admin"))
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"Loaded demo data in {elapsed:.1f} s: {counts['customers']:,} customers "
            f"({counts['with_email']:,} with email, {counts['with_phone']:,} with a phone, "
            f"{counts['devices']:,} with a push device), {counts['topics']} topics, "
            f"{counts['subscriptions']:,} subscriptions ({counts['unsubscribed']:,} unsubscribed), "
            f"{counts['consents']:,} consent entries, {counts['events']:,} events."
        )
        self._print_logins()
        if raw_key:
            self.stdout.write(f"API key '{DEMO_API_KEY_NAME}' (shown once, only its hash is stored): {raw_key}")

    def _users(self) -> dict[str, User]:
        # One hash for the three accounts: the password is public, and hashing is slow on purpose.
        password = None
        users = {}
        for username, role, superuser in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                password = password or make_password(DEMO_PASSWORD)
                user = User.objects.create(
                    username=username, email=f"{username}@example.com", password=password,
                    is_staff=superuser, is_superuser=superuser,
                )
            user.groups.add(Group.objects.get(name=role))
            users[username] = user
        return users

    def _print_logins(self) -> None:
        usernames = [username for username, _, _ in DEMO_USERS]
        existing = set(User.objects.filter(username__in=usernames).values_list("username", flat=True))
        logins = [f"{username} ({role})" for username, role, _ in DEMO_USERS if username in existing]
        if logins:
            self.stdout.write(f"Demo logins, password '{DEMO_PASSWORD}' unless changed: " + ", ".join(logins))


class Generator:
    """Draws the demo rows from ``rng`` and writes them; ``now`` anchors every date."""

    def __init__(self, rng: random.Random, now: datetime):
        self.rng = rng
        self.now = now
        self.window_start = now - timedelta(days=WINDOW_DAYS)
        self.country_weights = [country.weight for country in COUNTRIES]
        self.phones_seen: set[str] = set()
        self.events: list[tuple] = []

    def write(self, n: int) -> dict:
        topics = self._topics()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('customers_customer', 'id')) FROM generate_series(1, %s)", [n]
            )
            ids = [row[0] for row in cursor.fetchall()]
            people, customer_rows = self._customers(ids)
            _copy(cursor, Customer, customer_rows)
            devices = self._devices(people)
            _copy(cursor, Device, devices)
            subscriptions = self._subscriptions(people, topics)
            _copy(cursor, Subscription, subscriptions)
            consents = self._consents(people)
            _copy(cursor, Consent, consents)
            self._sessions(people)
            self._campaigns(people)
            timeline.copy_rows(cursor, self.events)

            # Current consent is the latest ledger entry per customer and channel.
            cursor.execute(
                """
                INSERT INTO customers_consentstate (customer_id, channel, granted, updated_at, consent_id)
                SELECT DISTINCT ON (customer_id, channel) customer_id, channel, granted, occurred_at, id
                FROM customers_consent WHERE customer_id = ANY(%(ids)s)
                ORDER BY customer_id, channel, occurred_at DESC, id DESC
                ON CONFLICT (customer_id, channel) DO UPDATE
                    SET granted = EXCLUDED.granted, updated_at = EXCLUDED.updated_at, consent_id = EXCLUDED.consent_id
                """,
                {"ids": ids},
            )
            # As in events_ingest: a customer is "seen" when they send an event, not when
            # the platform sends them a message or records a preference.
            cursor.execute(
                """
                UPDATE customers_customer c SET last_seen_at = seen.at
                FROM (SELECT customer_id, max(occurred_at) AS at FROM customers_event
                      WHERE customer_id = ANY(%(ids)s) AND category = 'event' GROUP BY customer_id) seen
                WHERE c.id = seen.customer_id
                """,
                {"ids": ids},
            )
            for model in (Customer, Device, Subscription, Consent, ConsentState, Event):
                cursor.execute(f"ANALYZE {model._meta.db_table}")
        return {
            "ids": ids,
            "customers": n,
            "with_email": sum(1 for p in people if p.email),
            "with_phone": sum(1 for p in people if p.phone),
            "devices": len(devices),
            "topics": len(topics),
            "subscriptions": len(subscriptions),
            "unsubscribed": sum(1 for row in subscriptions if not row[3]),
            "consents": len(consents),
            "events": len(self.events),
        }

    # --- helpers -----------------------------------------------------------------------------

    def _pick(self, weighted) -> str:
        return self.rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]

    def _between(self, start: datetime, end: datetime) -> datetime:
        if end <= start:
            return end
        return start + timedelta(seconds=self.rng.uniform(0, (end - start).total_seconds()))

    def _phone(self, region: str) -> str:
        """A valid mobile number of ``region``: its example number with the last digits varied."""
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        national = str(example.national_number)
        varied = min(6, len(national) - 3)
        for _ in range(50):
            digits = national[:-varied] + "".join(self.rng.choice("0123456789") for _ in range(varied))
            try:
                # The same check the API applies: parseable and valid for its country.
                e164 = normalize_phone(f"+{example.country_code}{digits}")
            except InvalidValue:
                continue
            if e164 not in self.phones_seen:
                self.phones_seen.add(e164)
                return e164
        return ""

    def _event(self, person: Person, name: str, properties: dict, at: datetime, source: str, channel: str = ""):
        received = at + timedelta(milliseconds=self.rng.randint(50, 3000))
        self.events.append((
            person.id, name, channel, _json(properties), at, received, source, None, "",
        ))

    # --- rows --------------------------------------------------------------------------------

    def _topics(self) -> dict[str, Topic]:
        topics = {}
        for key, name, description, transactional in TOPICS:
            topics[key], _ = Topic.objects.get_or_create(
                key=key, defaults={"name": name, "description": description, "is_transactional": transactional}
            )
        return topics

    def _customers(self, ids: list[int]):
        people, rows = [], []
        rng = self.rng
        for customer_id in ids:
            country = rng.choices(COUNTRIES, self.country_weights)[0]
            given, family = NAMES[country.names]
            first, last = rng.choice(given), rng.choice(family)
            stage = self._pick(STAGES)
            if stage == "lead":
                created = self._between(self.now - timedelta(days=WINDOW_DAYS), self.now - timedelta(hours=2))
            else:
                created = self._between(self.now - timedelta(days=1100), self.now - timedelta(days=WINDOW_DAYS - 5))
            email = ""
            if rng.random() < 0.93:
                email = f"{_ascii(first)}.{_ascii(last)}.{customer_id}@{rng.choice(EMAIL_DOMAINS)}"
            phone = self._phone(country.code) if rng.random() < 0.70 else ""
            plan = self._pick(PLANS[stage])
            value = {
                "lead": 0.0, "prospect": 0.0,
                "customer": rng.lognormvariate(5.5, 0.9),
                "expert": rng.lognormvariate(7.5, 0.6),
                "churned": rng.lognormvariate(4, 1) if rng.random() < 0.6 else 0.0,
            }[stage]
            attributes = {
                "plan": plan, "country": country.code, "signup_date": created.date().isoformat(),
                "lifetime_value": round(value, 2),
            }
            person = Person(customer_id, country, stage, created, email, phone)
            people.append(person)
            rows.append((
                customer_id, f"crm-{customer_id:06d}", email, phone, first, last, country.locale,
                rng.choice(country.zones),
                stage, _json(attributes), created, self._between(created, self.now), None,
            ))
        return people, rows

    def _devices(self, people: list[Person]) -> list[tuple]:
        rows = []
        for person in people:
            if self.rng.random() >= 0.20:
                continue
            token_id = f"{person.id}-{self.rng.getrandbits(96):024x}"
            if self.rng.random() < 0.75:
                person.device, person.platform = "fcm", self.rng.choice(("ios", "android"))
                token = f"demo-fcm:{token_id}"
            else:
                person.device, person.platform = "webpush", "web"
                token = _json({
                    "endpoint": f"https://push.example.net/wp/{token_id}",
                    "keys": {
                        "p256dh": f"demo-{self.rng.getrandbits(128):032x}",
                        "auth": f"{self.rng.getrandbits(64):016x}",
                    },
                })
            created = self._between(person.created_at, self.now - timedelta(days=1))
            rows.append((person.id, person.device, token, person.platform, created, self._between(created, self.now)))
        return rows

    def _subscriptions(self, people: list[Person], topics: dict[str, Topic]) -> list[tuple]:
        # topic, channel, needs, share of reachable customers with a choice, share of those opted out
        matrix = (
            ("newsletter", "email", "email", 0.65, 0.12),
            ("coupons", "email", "email", 0.30, 0.15),
            ("coupons", "sms", "phone", 0.35, 0.15),
            ("coupons", "whatsapp", "phone", 0.10, 0.10),
            ("product-updates", "push", "device", 0.70, 0.10),
            ("product-updates", "email", "email", 0.25, 0.10),
            ("alerts", "sms", "phone", 0.20, 0.05),
        )
        rows = []
        for person in people:
            for topic, channel, needs, share, opt_out in matrix:
                if not getattr(person, needs) or self.rng.random() >= share:
                    continue
                subscribed = self.rng.random() >= opt_out
                chosen_at = self._between(person.created_at, self.now)
                if subscribed:
                    source = self.rng.choice(("signup_form", "preference_centre", "checkout", "crm_import"))
                    person.subscribed.add((topic, channel))
                else:
                    source = {"sms": "sms_stop", "whatsapp": "whatsapp_stop"}.get(
                        channel, self.rng.choice(("unsubscribe_link", "preference_centre"))
                    )
                    self._event(
                        person, "subscription.changed",
                        {"topic": topic, "channel": channel, "subscribed": False, "previous": True, "source": source},
                        chosen_at, source, channel,
                    )
                rows.append((person.id, topics[topic].pk, channel, subscribed, source, chosen_at))
        return rows

    def _consents(self, people: list[Person]) -> list[tuple]:
        # channel, needs, share granted, share of grants later revoked, source of the grant
        ledger = (
            ("email", "email", 0.55, 0.05, ("signup_form", "checkout")),
            ("sms", "phone", 0.65, 0.12, ("signup_form", "checkout", "ivr")),
            ("whatsapp", "phone", 0.10, 0.08, ("whatsapp_optin",)),
            ("push", "device", 0.50, 0.10, ("app_prompt",)),
        )
        rows = []
        for person in people:
            for channel, needs, share, revoke_share, sources in ledger:
                if not getattr(person, needs) or self.rng.random() >= share:
                    continue
                granted_at = self._between(person.created_at, person.created_at + timedelta(days=3))
                granted_at = min(granted_at, self.now)
                source = self.rng.choice(sources)
                rows.append(self._consent_row(person, channel, True, granted_at, source))
                if self.rng.random() < revoke_share:
                    revoked_at = self._between(granted_at, self.now)
                    stop = {"sms": "sms_stop", "whatsapp": "whatsapp_stop", "push": "app_settings"}.get(
                        channel, "preference_centre"
                    )
                    rows.append(self._consent_row(person, channel, False, revoked_at, stop))
        return rows

    def _consent_row(self, person: Person, channel: str, granted: bool, at: datetime, source: str) -> tuple:
        rng = self.rng
        ip = rng.choice((f"192.0.2.{rng.randint(1, 254)}", f"198.51.100.{rng.randint(1, 254)}",
                         f"203.0.113.{rng.randint(1, 254)}", f"2001:db8::{rng.randint(1, 65535):x}"))
        web = source in {"signup_form", "checkout", "preference_centre"}
        wording = CONSENT_WORDING[channel] if granted else ""
        if source == "sms_stop":
            wording = "Replied STOP"
        self._event(
            person, "consent.granted" if granted else "consent.revoked",
            {"channel": channel, "source": source, "legal_basis": "consent",
             **({"wording": wording} if wording else {})},
            at, source, channel,
        )
        return (
            person.id, channel, granted, at, source, "consent", ip if web else None,
            rng.choice(USER_AGENTS) if web else "", wording,
            f"https://shop.example.com/{source.replace('_', '-')}" if web else "", ACTOR,
        )

    def _sessions(self, people: list[Person]) -> None:
        rng = self.rng
        for person in people:
            currency, rate = person.country.currency, person.country.per_usd
            start = max(person.created_at, self.window_start)
            end = self.now - timedelta(minutes=5)
            if person.stage == "churned":
                end = self.now - timedelta(days=32)
            if end <= start:
                continue
            sessions = _poisson(rng, SESSIONS[person.stage])
            for _ in range(sessions):
                at = self._between(start, end)
                in_app = person.device == "fcm" and rng.random() < 0.5
                source = "app" if in_app else "web"
                if in_app:
                    version = rng.choice(("4.1.0", "4.1.2", "4.2.0"))
                    self._event(person, "app_opened", {"platform": person.platform, "app_version": version}, at, "app")
                else:
                    path, title = rng.choice(PAGES)
                    self._event(person, "page_viewed", {"url": f"https://shop.example.com{path}", "title": title,
                                                        "referrer": rng.choice(REFERRERS)}, at, "web")
                cart = []
                for _ in range(rng.choice((0, 1, 1, 2, 3))):
                    at += timedelta(seconds=rng.randint(10, 240))
                    sku, name, price, category = rng.choice(PRODUCTS)
                    local_price = round(price * rate, 2)
                    self._event(person, "product_viewed", {"sku": sku, "product_name": name, "category": category,
                                                           "price": local_price, "currency": currency}, at, source)
                    if rng.random() < 0.3:
                        at += timedelta(seconds=rng.randint(5, 120))
                        quantity = rng.choice((1, 1, 1, 2))
                        cart.append((sku, quantity, local_price))
                        self._event(person, "added_to_cart", {"sku": sku, "quantity": quantity, "price": local_price,
                                                              "currency": currency}, at, source)
                if cart and rng.random() < 0.45:
                    at += timedelta(seconds=rng.randint(60, 900))
                    total = round(sum(quantity * price for _, quantity, price in cart), 2)
                    self._event(person, "order_completed", {
                        "order_id": f"ORD-{person.id}-{rng.randint(10000, 99999)}", "total": total,
                        "currency": currency, "items": sum(quantity for _, quantity, _ in cart),
                    }, min(at, self.now), source)

    def _campaigns(self, people: list[Person]) -> None:
        rng = self.rng
        for campaign_id, topic, channel, days_ago in CAMPAIGNS:
            sent_at = self.now - timedelta(days=days_ago, hours=rng.uniform(-3, 3))
            for person in people:
                if (topic, channel) not in person.subscribed or person.created_at > sent_at:
                    continue
                at = sent_at + timedelta(seconds=rng.randint(0, 1800))
                properties = {"channel": channel, "campaign_id": campaign_id, "topic": topic}
                self._event(person, "message.sent", properties, at, "platform", channel)
                engaged = 0.4 if person.stage == "churned" else 1.0
                opened = rng.random() < OPEN_RATE[channel] * engaged
                if opened:
                    at += timedelta(minutes=rng.expovariate(1 / 240))
                    self._event(person, "message.opened", properties, min(at, self.now), "platform", channel)
                if (opened or channel == "sms") and rng.random() < CLICK_RATE[channel] * engaged:
                    at += timedelta(seconds=rng.randint(5, 600))
                    self._event(
                        person, "message.clicked", {**properties, "url": "https://shop.example.com/collections/sale"},
                        min(at, self.now), "platform", channel,
                    )


# --- COPY ------------------------------------------------------------------------------------

COLUMNS = {
    Customer: ("id", "external_id", "email", "phone", "first_name", "last_name", "locale", "timezone",
               "lifecycle_stage", "attributes", "created_at", "updated_at", "last_seen_at"),
    Device: ("customer_id", "kind", "token", "platform", "created_at", "last_seen_at"),
    Subscription: ("customer_id", "topic_id", "channel", "subscribed", "source", "updated_at"),
    Consent: ("customer_id", "channel", "granted", "occurred_at", "source", "legal_basis", "ip_address",
              "user_agent", "wording", "form_url", "recorded_by"),
}


def _copy(cursor, model, rows: list[tuple]) -> None:
    columns = COLUMNS[model]
    statement = f"COPY {model._meta.db_table} ({', '.join(columns)}) FROM STDIN"
    # cursor.cursor is psycopg's own cursor under Django's wrapper.
    with cursor.cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _ascii(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method; the means here are small.
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1

