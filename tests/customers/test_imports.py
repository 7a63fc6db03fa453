"""Customer import: a CSV staged with COPY, validated and applied set-based in the background,
with a per-row report. Real PostgreSQL, real task queue (run in-process as a worker would)."""

import io
from datetime import datetime, timezone as dt_timezone

import pytest

from core.errors import InputError
from core.models import AuditEntry
from customers.imports import services
from customers.imports.models import CustomerImport, ImportIssue
from customers.models import Consent, ConsentState, Customer, Event, Subscription
from customers.services.preferences import consent_record
from customers.signals import customers_changed
from segments.models import SegmentMembership
from segments.services import segment_create
from tests.factories import CustomerFactory, SubscriptionFactory
from tests.segments.test_computation import run_background_tasks

pytestmark = pytest.mark.django_db(transaction=True)

HEADER = ("Customer ID,Email,Phone,First name,Last name,Time zone,Locale,Plan,Score,VIP,Birthday,"
          "Newsletter by email,Coupons by SMS,Email consent,Notes")

ROWS = [
    "new-1,Nina@Example.com,+33 6 12-34 (56) 78,Nina,New,Europe/Paris,fr-FR,pro,42,yes,1990-05-01,yes,no,granted,hi",
    "new-2,not-an-email,,Bad,Email,,,,,,,,,,",
    "new-3,bad.phone@example.com,06 12,Bad,Phone,,,,,,,,,,",
    "new-4,zone@example.com,,Bad,Zone,Mars/Olympus,,,,,,,,,",
    "new-1,again@example.com,,Dup,Licate,,,,,,,,,,",
    "new-5,taken@example.com,,Taken,Email,,,,,,,,,,",
    "new-6,score@example.com,,Bad,Score,,,,abc,,,,,,",
    "new-7,date@example.com,,Bad,Date,,,,,,2026-02-30,,,,",
    "new-8,sub@example.com,,Bad,Sub,,,,,,,maybe,,,",
    "crm-ada,ada@example.com,,Ada Augusta,Lovelace,,,team,,,,yes,,granted,",
    ",noid@example.com,,No,Id,,,,,,,,,,",
    "crm-bob,bob@example.com,,Bob,Stable,,,,,,,,,,",
]

MAPPING = {
    "Customer ID": {"to": "external_id"},
    "Email": {"to": "email"},
    "Phone": {"to": "phone"},
    "First name": {"to": "first_name"},
    "Last name": {"to": "last_name"},
    "Time zone": {"to": "timezone"},
    "Locale": {"to": "locale"},
    "Plan": {"to": "attribute", "key": "plan", "type": "text"},
    "Score": {"to": "attribute", "key": "score", "type": "number"},
    "VIP": {"to": "attribute", "key": "vip", "type": "boolean"},
    "Birthday": {"to": "attribute", "key": "birthday", "type": "date"},
    "Newsletter by email": {"to": "subscription", "topic": "newsletter", "channel": "email"},
    "Coupons by SMS": {"to": "subscription", "topic": "coupons", "channel": "sms"},
    "Email consent": {"to": "consent", "channel": "email", "source": "crm", "legal_basis": "consent",
                      "wording": "Send me news by email"},
    "Notes": {"to": "skip"},
}


def csv_file(*rows, header=HEADER) -> io.BytesIO:
    return io.BytesIO(("\n".join([header, *rows]) + "\n").encode())


def upload(*rows, header=HEADER) -> CustomerImport:
    return services.import_upload(file=csv_file(*rows, header=header), filename="crm.csv", actor="marketer")


def run_import(*rows, mapping=MAPPING, match_on="external_id", update=True, header=HEADER) -> CustomerImport:
    customer_import = upload(*rows, header=header)
    services.import_start(customer_import=customer_import, mapping_spec=mapping, match_on=match_on,
                          update_existing=update, actor="marketer")
    run_background_tasks()
    customer_import.refresh_from_db()
    assert customer_import.status == CustomerImport.Status.DONE, customer_import.error
    return customer_import


def reasons(customer_import, kind=ImportIssue.Kind.REJECTED) -> dict[int, str]:
    return dict(customer_import.issues.filter(kind=kind).values_list("line", "reason"))


@pytest.fixture
def known(topics):
    """Ada unsubscribed from the newsletter in the preference centre and revoked email consent;
    Bob is as the file says; Tess owns taken@example.com."""
    ada = CustomerFactory(external_id="crm-ada", email="ada@example.com", first_name="Ada", last_name="Lovelace",
                          phone="")
    bob = CustomerFactory(external_id="crm-bob", email="bob@example.com", first_name="Bob", last_name="Stable")
    tess = CustomerFactory(external_id="crm-tess", email="taken@example.com")
    SubscriptionFactory(customer=ada, topic=topics["newsletter"], channel="email", subscribed=False,
                        source="preference-centre")
    Subscription.objects.filter(customer=ada).update(updated_at=datetime(2026, 11, 3, 12, tzinfo=dt_timezone.utc))
    consent_record(customer=ada, channel="email", granted=False, source="preference-centre", actor="ada",
                   occurred_at=datetime(2026, 10, 1, 9, tzinfo=dt_timezone.utc))
    return {"ada": ada, "bob": bob, "tess": tess}


def test_every_kind_of_bad_row_is_rejected_with_a_reason_naming_the_column(known):
    done = run_import(*ROWS)
    rejected = reasons(done)
    assert rejected == {
        3: "Email: 'not-an-email' is not an email address",
        4: "Phone: '06 12' is not an E.164 phone number such as +14155550123 (after removing spaces, dashes and brackets)",
        5: "Time zone: 'Mars/Olympus' is not a time zone name such as Europe/Paris",
        6: "Customer ID: duplicate of line 2",
        7: f"Email: taken@example.com already belongs to another customer (id {known['tess'].pk})",
        8: "Score: 'abc' is not a number",
        9: "Birthday: '2026-02-30' is not a date as YYYY-MM-DD",
        10: "Newsletter by email: 'maybe' is not yes/no, true/false, 1/0 or subscribed/unsubscribed",
        12: "Customer ID: empty; rows are matched by external_id",
    }
    issue = done.issues.get(line=3)
    assert issue.values[:3] == ["new-2", "not-an-email", None]
    assert (done.created_count, done.updated_count, done.unchanged_count, done.rejected_count) == (1, 1, 1, 9)
    assert done.warning_count == 1

    nina = Customer.objects.get(external_id="new-1")
    assert (nina.email, nina.phone, nina.timezone, nina.locale) == ("nina@example.com", "+33612345678", "Europe/Paris", "fr-FR")
    assert nina.attributes == {"plan": "pro", "score": 42, "vip": True, "birthday": "1990-05-01"}
    assert set(nina.subscriptions.values_list("topic__key", "channel", "subscribed")) == {
        ("newsletter", "email", True), ("coupons", "sms", False)}
    assert ConsentState.objects.get(customer=nina, channel="email").granted is True
    consent = Consent.objects.get(customer=nina)
    assert (consent.source, consent.legal_basis, consent.wording, consent.recorded_by) == (
        "crm", "consent", "Send me news by email", "marketer")
    # Staging and work tables are dropped when the import finishes.
    assert services.staged_rows(done) == 0


def test_an_unsubscribe_and_a_revoked_consent_are_kept_and_the_row_says_so(known):
    done = run_import(*ROWS)
    ada = Customer.objects.get(pk=known["ada"].pk)
    assert ada.first_name == "Ada Augusta" and ada.attributes == {"plan": "team"}
    assert Subscription.objects.get(customer=ada, topic__key="newsletter").subscribed is False
    assert ConsentState.objects.get(customer=ada, channel="email").granted is False
    assert reasons(done, ImportIssue.Kind.WARNING) == {
        11: "newsletter by email: kept unsubscribed: unsubscribed on 2026-11-03 via preference centre; "
            "email consent: kept revoked: revoked on 2026-10-01 via preference centre"
    }
    assert not Event.objects.filter(customer=ada, name__in=["subscription.changed", "consent.granted"]).exists()
    updated = Event.objects.get(customer=ada, name="customer.updated")
    assert updated.properties == {"changes": {"first_name": ["Ada", "Ada Augusta"], "attributes.plan": [None, "team"]}}
    assert updated.source == "import" and updated.actor == "marketer"


def test_timeline_rows_have_the_services_names_and_one_signal_is_sent(known):
    heard = []

    def listener(sender, change, **kwargs):
        heard.append(change)

    customers_changed.connect(listener, dispatch_uid="test.imports")
    try:
        run_import(*ROWS)
    finally:
        customers_changed.disconnect(dispatch_uid="test.imports")
    nina = Customer.objects.get(external_id="new-1")
    ada = known["ada"]
    mine = [change for change in heard if nina.pk in change.customer_ids or ada.pk in change.customer_ids]
    assert len(mine) == 1
    (change,) = mine
    assert change.created == {nina.pk}
    assert change.by_name["customer.created"] == {nina.pk}
    assert change.by_name["customer.updated"] == {ada.pk}
    assert change.by_name["subscription.changed"] == {nina.pk}
    assert change.by_name["consent.granted"] == {nina.pk}
    assert {"first_name", "attributes.plan", "subscriptions", "consent"} <= change.fields
    assert known["bob"].pk not in change.customer_ids
    created = Event.objects.get(customer=nina, name="customer.created")
    assert created.properties["fields"]["email"] == [None, "nina@example.com"]
    assert created.properties["fields"]["attributes.score"] == [None, 42]
    subs = {e.properties["topic"]: e.properties for e in Event.objects.filter(customer=nina, name="subscription.changed")}
    assert subs["newsletter"] == {"topic": "newsletter", "channel": "email", "subscribed": True, "previous": None,
                                  "source": "import"}
    granted = Event.objects.get(customer=nina, name="consent.granted")
    assert granted.channel == "email" and granted.properties["wording"] == "Send me news by email"
    assert granted.properties["consent_id"] == Consent.objects.get(customer=nina).pk


def test_running_the_same_file_again_changes_nothing(known):
    run_import(*ROWS)
    events = Event.objects.count()
    heard = []

    def listener(sender, change, **kwargs):
        heard.append(change)

    customers_changed.connect(listener, dispatch_uid="test.imports.again")
    try:
        again = run_import(*ROWS)
    finally:
        customers_changed.disconnect(dispatch_uid="test.imports.again")
    assert (again.created_count, again.updated_count, again.unchanged_count, again.rejected_count) == (0, 0, 3, 9)
    assert Event.objects.count() == events
    assert heard == []


def test_create_only_leaves_existing_customers_alone(known):
    done = run_import(*ROWS, update=False)
    assert (done.created_count, done.updated_count, done.unchanged_count) == (1, 0, 2)
    ada = Customer.objects.get(pk=known["ada"].pk)
    assert ada.first_name == "Ada" and ada.attributes == {}
    assert not Event.objects.filter(customer=ada, name="customer.updated").exists()


@pytest.mark.parametrize("match_on, key", [("email", "Email"), ("phone", "Phone")])
def test_customers_are_matched_by_email_or_phone(topics, match_on, key):
    someone = CustomerFactory(external_id=None, email="sam@example.com", phone="+14155550123", first_name="Sam")
    header = "Email,Phone,First name"
    done = run_import("SAM@example.com,+1 (415) 555-0123,Samuel", "new@example.com,+1 415 555 0199,Newton",
                      header=header, match_on=match_on,
                      mapping={"Email": "email", "Phone": "phone", "First name": "first_name"})
    assert (done.created_count, done.updated_count, done.rejected_count) == (1, 1, 0)
    someone.refresh_from_db()
    assert someone.first_name == "Samuel"
    assert Customer.objects.filter(email="new@example.com", phone="+14155550199").exists()


def test_a_phone_several_customers_share_is_no_match(topics):
    CustomerFactory(phone="+14155550123")
    CustomerFactory(phone="+14155550123")
    done = run_import("+14155550123,Pat", header="Phone,First name", match_on="phone",
                      mapping={"Phone": "phone", "First name": "first_name"})
    assert reasons(done) == {2: "Phone: +14155550123 belongs to 2 customers; match by external id or email instead"}


def test_segments_see_imported_attributes(topics, settings):
    settings.SEGMENT_COMPUTE_INLINE_CUSTOMERS = 1000
    pros = segment_create(name="Pro plan", rules={"attr": "attributes.plan", "op": "eq", "value": "pro"}, actor="t")
    run_background_tasks()
    done = run_import("p-1,pro", "p-2,free", header="Id,Plan",
                      mapping={"Id": "external_id", "Plan": {"to": "attribute", "key": "plan", "type": "text"}})
    assert done.created_count == 2
    members = set(SegmentMembership.objects.filter(segment=pros).values_list("customer__external_id", flat=True))
    assert members == {"p-1"}
    run_import("p-1,free", "p-2,pro", header="Id,Plan",
               mapping={"Id": "external_id", "Plan": {"to": "attribute", "key": "plan", "type": "text"}})
    members = set(SegmentMembership.objects.filter(segment=pros).values_list("customer__external_id", flat=True))
    assert members == {"p-2"}


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty; the first line must name the columns"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "line 1 holds binary data: this is not a CSV text file"),
    (b"id,email\n", "the file has a header but no rows"),
    (b"id,email\na,b\nc,d,e\n", "line 3 has more values than the header's 2 columns"),
    (b"id,email\na,b\nc\n", "line 3 has fewer values than the header's 2 columns"),
    (b"id,name\na,Ren\xe9e\n", "line 2 is not UTF-8 text; save the file as CSV UTF-8"),
    (b"id,name\na,\"open\n", "a quoted value is never closed: the file ends inside it, at line 3"),
    (b"id,id\na,b\n", "line 1 names the column 'id' twice; each column needs its own name"),
])
def test_a_broken_file_gets_one_error_naming_the_line_and_nothing_is_stored(db, content, message):
    with pytest.raises(InputError) as raised:
        services.import_upload(file=io.BytesIO(content), filename="bad.csv", actor="marketer")
    assert [e.message for e in raised.value.errors] == [message]
    assert not CustomerImport.objects.exists()


def test_a_semicolon_file_with_a_bom_is_read_and_previewed(db):
    customer_import = services.import_upload(
        file=io.BytesIO("\ufeffid;email\n1;a@example.com\n2;b@example.com\n".encode()), filename="x.csv", actor="m")
    assert customer_import.columns == ["id", "email"]
    assert customer_import.preview == [["1", "a@example.com"], ["2", "b@example.com"]]
    assert customer_import.rows_total == 2
    assert services.staged_rows(customer_import) == 2


def test_a_bad_mapping_names_the_column_and_starts_nothing(topics):
    customer_import = upload(*ROWS[:1])
    with pytest.raises(InputError) as raised:
        services.import_start(customer_import=customer_import, match_on="external_id", update_existing=True,
                              actor="m", mapping_spec={"Customer ID": "external_id", "Plan": {"to": "attribute", "key": "9"},
                                                       "Newsletter by email": {"to": "subscription", "topic": "nope",
                                                                               "channel": "email"},
                                                       "Nope": "email"})
    assert {e.field for e in raised.value.errors} == {"mapping.Plan", "mapping.Newsletter by email", "mapping.Nope"}
    customer_import.refresh_from_db()
    assert customer_import.status == CustomerImport.Status.STAGED


def test_starting_is_audited_and_running_twice_applies_once(known):
    customer_import = upload(*ROWS)
    services.import_start(customer_import=customer_import, mapping_spec=MAPPING, match_on="external_id",
                          update_existing=True, actor="marketer")
    assert AuditEntry.objects.filter(action="import.started", object_id=str(customer_import.pk)).exists()
    services.import_run(import_id=customer_import.pk)
    events = Event.objects.count()
    services.import_run(import_id=customer_import.pk)
    run_background_tasks()
    customer_import.refresh_from_db()
    assert customer_import.status == CustomerImport.Status.DONE
    assert customer_import.created_count == 1
    assert Event.objects.count() == events


def test_a_large_file_is_applied_in_chunks_with_progress(topics, monkeypatch):
    monkeypatch.setattr(services, "CHUNK_ROWS", 40)
    rows = [f"bulk-{n},bulk{n}@example.com,yes" for n in range(100)]
    customer_import = upload(*rows, header="Id,Email,Newsletter")
    services.import_start(customer_import=customer_import, match_on="external_id", update_existing=True, actor="m",
                          mapping_spec={"Id": "external_id", "Email": "email",
                                        "Newsletter": {"to": "subscription", "topic": "newsletter", "channel": "email"}})
    services.import_run(import_id=customer_import.pk, seconds=0)
    customer_import.refresh_from_db()
    assert customer_import.status == CustomerImport.Status.APPLYING
    assert customer_import.progress()["rows_done"] == 40
    run_background_tasks()
    customer_import.refresh_from_db()
    assert (customer_import.status, customer_import.created_count) == (CustomerImport.Status.DONE, 100)
    assert Subscription.objects.filter(topic__key="newsletter", subscribed=True).count() == 100
