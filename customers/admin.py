"""Django admin for the customers app: raw records, topics and API keys.

The timeline (Event), the consent ledger and its derived state, and the audit trail are
history: viewable here, never edited (consent can be recorded anew). Every save goes through
the customers services, so it leaves the same timeline entry, and tells the same listeners,
as the same change made anywhere else.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from core.admin import BigTableAdmin, ReadOnlyAdmin, ReadOnlyInline
from core.audit import audit
from core.text import plural

from .models import (
    ApiKey,
    ChannelStatus,
    Consent,
    ConsentState,
    Customer,
    CustomerImport,
    Device,
    EmailRequest,
    Event,
    ImportIssue,
    Subscription,
    Topic,
)
from .services import api_keys, preferences, profiles
from .validation import CONSENT_AHEAD, InvalidValue, check_moment, normalize_email, normalize_phone, normalize_timezone


def _actor(request) -> str:
    return f"admin:{request.user.get_username()}"


def _audit_admin_change(request, obj, form, change: bool, object_type: str) -> None:
    fields = sorted(form.changed_data) if change else []
    audit(
        actor=_actor(request),
        action=f"{object_type}.{'changed' if change else 'created'}",
        object_type=object_type,
        object_id=obj.pk,
        details={"fields": fields, "source": "admin"} if change else {"source": "admin"},
    )


# --- Customers --------------------------------------------------------------------------------


class SubscriptionInline(ReadOnlyInline):
    model = Subscription
    fields = ("topic", "channel", "subscribed", "source", "updated_at")
    readonly_fields = fields
    verbose_name_plural = "subscriptions (change them on the Subscription page, with a reason)"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("topic")


class ConsentStateInline(ReadOnlyInline):
    model = ConsentState
    fields = ("channel", "granted", "updated_at", "consent")
    readonly_fields = fields
    verbose_name_plural = "current consent (from the ledger)"
    show_change_link = False


class DeviceInline(ReadOnlyInline):
    model = Device
    fields = ("kind", "platform", "created_at", "last_seen_at")
    readonly_fields = fields


class CustomerForm(forms.ModelForm):
    """Profile fields, normalised the same way the API and the support UI normalise them."""

    class Meta:
        model = Customer
        fields = (
            "external_id", "email", "phone", "first_name", "last_name", "locale", "timezone",
            "lifecycle_stage", "attributes",
        )

    def _normalised(self, function, name: str) -> str:
        try:
            return function(self.cleaned_data.get(name) or "")
        except InvalidValue as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_email(self):
        email = self._normalised(normalize_email, "email")
        if email and Customer.objects.filter(email__iexact=email).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError(f"{email} already belongs to another customer.")
        return email

    def clean_phone(self):
        return self._normalised(normalize_phone, "phone")

    def clean_timezone(self):
        return self._normalised(normalize_timezone, "timezone")

    def clean_external_id(self):
        # An empty external id is "none", not "": "" would collide with every other empty one.
        return self.cleaned_data.get("external_id") or None

    def clean_attributes(self):
        attributes = self.cleaned_data.get("attributes")
        if attributes is None:
            return {}
        if not isinstance(attributes, dict):
            raise forms.ValidationError('Attributes must be a JSON object, e.g. {"plan": "pro"}.')
        return attributes


@admin.register(Customer)
class CustomerAdmin(BigTableAdmin):
    form = CustomerForm
    list_display = ("customer_name", "email", "phone", "external_id", "lifecycle_stage", "last_seen_at")
    list_display_links = ("customer_name",)
    list_filter = ("lifecycle_stage",)
    # The search itself is Customer.objects.search (see get_search_results); these only
    # switch the search box and the autocomplete endpoint on.
    search_fields = ("email", "external_id", "first_name", "last_name", "phone")
    search_help_text = "Email, name, external id, customer id, or at least 4 digits of a phone number."
    # Ordering by the primary key walks its index; the stages and dates are not indexed for it.
    ordering = ("-id",)
    readonly_fields = ("created_at", "updated_at", "last_seen_at", "timeline", "anonymous_id", "merged_into", "merged_at")
    fieldsets = (
        (None, {"fields": ("external_id", "email", "phone", "first_name", "last_name")}),
        ("Profile", {"fields": ("locale", "timezone", "lifecycle_stage", "attributes")}),
        ("History", {"fields": ("created_at", "updated_at", "last_seen_at", "timeline")}),
        ("Anonymous visitor", {"fields": ("anonymous_id", "merged_into", "merged_at"), "classes": ("collapse",)}),
    )
    inlines = (SubscriptionInline, ConsentStateInline, DeviceInline)

    @admin.display(description="name")
    def customer_name(self, obj: Customer) -> str:
        if not obj.full_name and obj.is_anonymous:
            return f"Anonymous visitor {obj.short_anonymous_id}"
        return obj.full_name or f"Customer {obj.pk}"

    @admin.display(description="timeline")
    def timeline(self, obj: Customer) -> str:
        if obj.pk is None:
            return "—"
        url = reverse("admin:customers_event_changelist") + f"?customer__id__exact={obj.pk}"
        return format_html('<a href="{}">Events of this customer</a>', url)

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return queryset.search(search_term), False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting a customer would delete their timeline and consent ledger, which are
        # kept as history; erasure needs its own recorded procedure.
        return False

    def save_model(self, request, obj: Customer, form, change: bool) -> None:
        profiles.customer_save(
            customer=obj, changes=_profile_changes(form, change), created=not change, source="admin",
            actor=_actor(request),
        )
        _audit_admin_change(request, obj, form, change, "customer")


def _profile_changes(form, change: bool) -> dict:
    """{field: [old, new]} as the services record it: attributes key by key (``attributes.plan``)."""
    changes = {}
    for name in form.changed_data:
        old = form.initial.get(name) if change else None
        new = form.cleaned_data.get(name)
        if name == "attributes":
            old, new = old or {}, new or {}
            for key in sorted(old.keys() | new.keys()):
                if old.get(key) != new.get(key):
                    changes[f"attributes.{key}"] = [old.get(key), new.get(key)]
        else:
            changes[name] = [_jsonable(old), _jsonable(new)]
    return changes


def _jsonable(value):
    return value if value is None or isinstance(value, (str, int, float, bool, dict, list)) else str(value)


@admin.register(Device)
class DeviceAdmin(BigTableAdmin):
    list_display = ("id", "customer", "kind", "platform", "created_at", "last_seen_at")
    list_filter = ("kind", "platform")
    search_fields = ("customer__external_id__exact", "customer__id__exact")
    search_help_text = "Customer external id or customer id."
    autocomplete_fields = ("customer",)
    list_select_related = ("customer",)
    ordering = ("-id",)

    def has_change_permission(self, request, obj=None) -> bool:
        # A token is what the customer's device reported: register a new one or remove it.
        return False

    def save_model(self, request, obj: Device, form, change: bool) -> None:
        device = profiles.device_register(
            customer=obj.customer, kind=obj.kind, token=obj.token, platform=obj.platform,
            source="admin", actor=_actor(request),
        )
        _adopt(obj, device)

    def delete_model(self, request, obj) -> None:
        self.delete_queryset(request, Device.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset) -> None:
        devices = list(queryset.values_list("pk", "customer_id"))
        profiles.devices_remove(device_ids=[pk for pk, _ in devices], reason="removed in admin", source="admin",
                                actor=_actor(request))
        for pk, customer_id in devices:
            audit(actor=_actor(request), action="device.deleted", object_type="device", object_id=pk,
                  details={"customer": customer_id})


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ("name", "key", "is_transactional", "created_at")
    list_filter = ("is_transactional",)
    search_fields = ("name", "key")
    fields = ("name", "key", "description", "is_transactional", "created_at")

    def get_prepopulated_fields(self, request, obj=None):
        return {"key": ("name",)} if obj is None else {}

    def get_readonly_fields(self, request, obj=None):
        # Subscriptions, templates and API callers refer to a topic by its key.
        return ("key", "created_at") if obj is not None else ("created_at",)

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        _audit_admin_change(request, obj, form, change, "topic")


class SubscriptionForm(forms.ModelForm):
    reason = forms.CharField(
        required=False, max_length=500, help_text="Why the preference changed; kept on the customer's timeline."
    )

    class Meta:
        model = Subscription
        fields = ("customer", "topic", "channel", "subscribed")


@admin.register(Subscription)
class SubscriptionAdmin(BigTableAdmin):
    form = SubscriptionForm
    list_display = ("id", "customer", "topic", "channel", "subscribed", "source", "updated_at")
    list_filter = ("topic", "channel", "subscribed")
    search_fields = ("customer__external_id__exact", "customer__id__exact")
    search_help_text = "Customer external id or customer id."
    autocomplete_fields = ("customer",)
    list_select_related = ("customer", "topic")
    ordering = ("-id",)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ("source", "updated_at")
        return ("customer", "topic", "channel", "source", "updated_at")

    def has_delete_permission(self, request, obj=None) -> bool:
        # A deleted row would erase the choice without a trace; unsubscribe instead.
        return False

    def save_model(self, request, obj: Subscription, form, change: bool) -> None:
        preferences.subscription_set(
            customer=obj.customer, topic=obj.topic, channel=obj.channel, subscribed=obj.subscribed,
            source="admin", actor=_actor(request), reason=form.cleaned_data.get("reason", ""),
        )
        saved = Subscription.objects.get(customer=obj.customer, topic=obj.topic, channel=obj.channel)
        _adopt(obj, saved)


def _adopt(obj, saved) -> None:
    """Make the admin's unsaved ``obj`` the row a service wrote, so the admin links to it."""
    for field in saved._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


@admin.register(ChannelStatus)
class ChannelStatusAdmin(BigTableAdmin):
    list_display = ("customer", "channel", "status", "reason", "updated_at")
    list_filter = ("channel", "status")
    search_fields = ("customer__external_id__exact", "customer__id__exact")
    search_help_text = "Customer external id or customer id."
    autocomplete_fields = ("customer",)
    list_select_related = ("customer",)
    ordering = ("-id",)
    fields = ("customer", "channel", "status", "reason", "updated_at")

    def get_readonly_fields(self, request, obj=None):
        return ("updated_at",) if obj is None else ("customer", "channel", "updated_at")

    def has_delete_permission(self, request, obj=None) -> bool:
        # No row means "fine"; setting the status to OK says the same and keeps the reason.
        return False

    def save_model(self, request, obj: ChannelStatus, form, change: bool) -> None:
        preferences.channel_status_set(
            customer_ids={obj.customer_id}, channel=obj.channel, status=obj.status, reason=obj.reason,
            source="admin", actor=_actor(request),
        )
        _audit_admin_change(request, obj, form, change, "channel_status")
        _adopt(obj, ChannelStatus.objects.get(customer_id=obj.customer_id, channel=obj.channel))


# --- History: timeline, consent ledger, audit trail ------------------------------------------------


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "name", "customer", "category", "channel", "source", "actor")
    # No date_hierarchy: it needs min/max and per-day counts of occurred_at, which has no
    # index of its own, so every page view would scan the whole timeline.
    list_filter = ("category", "channel", "occurred_at")
    search_fields = ("name__exact", "customer__external_id__exact", "customer__id__exact")
    search_help_text = "Exact event name (order_completed), customer external id or customer id."
    # Newest received first by primary key: ordering by occurred_at would sort the table.
    ordering = ("-id",)
    list_select_related = ("customer",)


class ConsentForm(forms.ModelForm):
    class Meta:
        model = Consent
        fields = ("customer", "channel", "granted", "legal_basis", "occurred_at", "wording", "form_url")
        help_texts = {
            "occurred_at": "When the customer gave or withdrew consent (for example on a call or on paper).",
            "wording": "What the customer was told or agreed to.",
        }

    def clean_occurred_at(self):
        value = self.cleaned_data.get("occurred_at")
        if value is None:
            return value
        try:
            return check_moment(value, ahead=CONSENT_AHEAD, what="the consent time")
        except InvalidValue as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(Consent)
class ConsentAdmin(ReadOnlyAdmin):
    """The ledger is append-only: an admin can record a new grant or revocation (with its
    proof), which updates the current state like any other source; entries never change."""

    form = ConsentForm
    list_display = ("occurred_at", "customer", "channel", "granted", "source", "legal_basis", "recorded_by")
    list_filter = ("channel", "granted", "legal_basis")
    date_hierarchy = "occurred_at"
    search_fields = ("customer__external_id__exact", "customer__id__exact", "source__exact")
    search_help_text = "Customer external id, customer id, or exact source."
    list_select_related = ("customer",)
    autocomplete_fields = ("customer",)

    def has_add_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("customers.add_consent")

    def save_model(self, request, obj: Consent, form, change: bool) -> None:
        entry = preferences.consent_record(
            customer=obj.customer, channel=obj.channel, granted=obj.granted, source="admin",
            actor=_actor(request), legal_basis=obj.legal_basis, wording=obj.wording, form_url=obj.form_url,
            occurred_at=obj.occurred_at,
        )
        _adopt(obj, entry)


@admin.register(ConsentState)
class ConsentStateAdmin(ReadOnlyAdmin):
    list_display = ("customer", "channel", "granted", "updated_at", "consent")
    list_filter = ("channel", "granted")
    search_fields = ("customer__external_id__exact", "customer__id__exact")
    search_help_text = "Customer external id or customer id."
    list_select_related = ("customer", "consent")
    ordering = ("-id",)


@admin.register(EmailRequest)
class EmailRequestAdmin(ReadOnlyAdmin):
    """Who asked the public forms for emails (password resets, fresh preference links) in the
    last limit window: addresses are kept only as an HMAC, so this shows volume, not people."""

    list_display = ("requested_at", "purpose", "ip_address", "allowed")
    list_filter = ("purpose", "allowed")
    date_hierarchy = "requested_at"
    search_fields = ("ip_address__exact",)
    search_help_text = "Exact client address."


# --- API keys ------------------------------------------------------------------------------------


class ApiKeyAddForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("name", "scope")
        help_texts = {
            "name": "What the key is for, e.g. 'web-tracking' or 'crm-sync'.",
            "scope": "A write key is for Segment and RudderStack SDKs (safe in web pages); it cannot open the JSON API.",
        }


class RevokedFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return (("active", "Active"), ("revoked", "Revoked"))

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "scope", "prefix", "created_at", "created_by", "last_used_at", "revoked_at")
    list_filter = (RevokedFilter, "scope")
    search_fields = ("name", "prefix")
    actions = ("revoke_selected",)
    readonly_fields = ("scope", "prefix", "created_at", "created_by", "last_used_at", "revoked_at")

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "scope")
        return ("name", "scope", "prefix", "created_at", "created_by", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def has_delete_permission(self, request, obj=None) -> bool:
        # Audit entries name keys by id; a revoked key stays recognisable.
        return False

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            _audit_admin_change(request, obj, form, change, "api_key")
            return
        key, raw = api_keys.api_key_create(
            name=form.cleaned_data["name"], scope=form.cleaned_data["scope"], created_by=request.user
        )
        _adopt(obj, key)
        messages.success(request, f"Copy this key now, it will not be shown again: {raw}")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_keys.api_key_revoke(key=key, actor=_actor(request))
            revoked += 1
        if revoked:
            messages.success(request, f"Revoked {revoked} {plural(revoked, 'key')}; requests with "
                                      f"{'them' if revoked != 1 else 'it'} are now refused.")
        else:
            messages.info(request, "The selected keys were already revoked.")


# --- Imports ------------------------------------------------------------------------------------


@admin.register(CustomerImport)
class CustomerImportAdmin(ReadOnlyAdmin):
    """Imports are made on the import pages or through the API; here they are read."""

    list_display = ("id", "page_link", "filename", "status", "rows_total", "created_count", "updated_count", "unchanged_count",
                    "rejected_count", "warning_count", "match_on", "actor", "created_at", "finished_at")
    list_filter = ("status", "match_on")
    search_fields = ("filename", "actor")
    list_select_related = ("created_by",)
    date_hierarchy = "created_at"

    @admin.display(description="page")
    def page_link(self, obj):
        return format_html('<a href="{}">open</a>', reverse("customers:import_detail", args=[obj.pk]))


@admin.register(ImportIssue)
class ImportIssueAdmin(ReadOnlyAdmin):
    list_display = ("customer_import", "line", "kind", "reason")
    list_filter = ("kind",)
    list_select_related = ("customer_import",)
    raw_id_fields = ("customer_import",)
