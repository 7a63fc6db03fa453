"""Django admin for outgoing webhooks: endpoints (with their status and a notice when one
was disabled), the delivery log with each message's attempts, and the actions: replay,
rotate the secret (shown once), enable and disable. Every write goes through the services."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.html import format_html

from core.admin import BigTableAdmin, ReadOnlyInline
from core.errors import InputError
from core.text import plural

from . import services
from .models import Attempt, Endpoint, Message


def _actor(request) -> str:
    return f"admin:{request.user.get_username()}"


def _adopt(obj, saved) -> None:
    """Make the admin's unsaved ``obj`` the row the service wrote, so the admin links to it."""
    for field in saved._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


class EndpointForm(forms.ModelForm):
    class Meta:
        model = Endpoint
        fields = ("url", "description", "events")
        help_texts = {
            "events": "Comma-separated: event names (order_completed), patterns (message.*, journey.*, "
                      "segment.*, customer.*) or * for every event.",
        }

    def clean(self):
        data = super().clean()
        for name, check in (("url", services.clean_url), ("events", services.clean_events)):
            if name in data:
                try:
                    data[name] = check(data[name])
                except InputError as error:
                    self.add_error(name, error.errors[0].message)
        return data


def _counts(queryset):
    since = timezone.now() - timedelta(hours=24)
    pending = Message.objects.filter(endpoint=OuterRef("pk"), status=Message.Status.PENDING).order_by()
    failures = Attempt.objects.filter(endpoint=OuterRef("pk"), succeeded=False, attempted_at__gte=since).order_by()
    return queryset.annotate(
        pending_count=Coalesce(Subquery(pending.values("endpoint").annotate(n=Count("*")).values("n"),
                                        output_field=IntegerField()), 0),
        failures_24h=Coalesce(Subquery(failures.values("endpoint").annotate(n=Count("*")).values("n"),
                                       output_field=IntegerField()), 0),
    )


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ("url", "status_notice", "events_list", "last_delivery_at", "pending", "failures")
    list_filter = ("status",)
    search_fields = ("url", "description")
    actions = ("rotate_secret", "enable", "disable")
    readonly_fields = ("status", "disabled_reason", "disabled_at", "last_delivery_at", "previous_secret_expires_at",
                       "created_at")

    def get_queryset(self, request):
        return _counts(super().get_queryset(request))

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("url", "description", "events")
        return ("url", "description", "events", *self.readonly_fields)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    @admin.display(description="Status", ordering="status")
    def status_notice(self, endpoint: Endpoint):
        if endpoint.status == Endpoint.Status.DISABLED:
            # The list stays narrow: the start of the reason, all of it on the change page.
            reason = endpoint.disabled_reason
            short = reason if len(reason) <= 90 else reason[:89] + "…"
            return format_html('<strong class="errornote">Disabled</strong> <span title="{}">{}</span>',
                               reason, short)
        return "Enabled"

    @admin.display(description="Events")
    def events_list(self, endpoint: Endpoint) -> str:
        return ", ".join(endpoint.events)

    @admin.display(description="Waiting", ordering="pending_count")
    def pending(self, endpoint: Endpoint) -> int:
        return endpoint.pending_count

    @admin.display(description="Failed attempts (24 h)", ordering="failures_24h")
    def failures(self, endpoint: Endpoint) -> int:
        return endpoint.failures_24h

    def change_view(self, request, object_id, form_url="", extra_context=None):
        endpoint = Endpoint.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        if endpoint is not None and endpoint.status == Endpoint.Status.DISABLED and request.method == "GET":
            since = f"{endpoint.disabled_at:%Y-%m-%d %H:%M} UTC" if endpoint.disabled_at else "now"
            messages.warning(request, f"This endpoint is disabled (since {since}): "
                                      f"{endpoint.disabled_reason.rstrip('.') or 'by hand'}. Its messages wait; "
                                      "run “Enable selected endpoints” on it in the list to resume delivery in order, "
                                      "from the message it stopped at.")
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj: Endpoint, form, change: bool) -> None:
        data = form.cleaned_data
        if change:
            saved = services.endpoint_update(endpoint=obj, url=data["url"], events=data["events"],
                                             description=data["description"], actor=_actor(request))
        else:
            saved = services.endpoint_create(url=data["url"], events=data["events"],
                                             description=data["description"], actor=_actor(request))
            messages.success(request, f"Copy the signing secret now, it will not be shown again: {saved.secret}")
        _adopt(obj, saved)

    def get_deleted_objects(self, objs, request):
        """The endpoints and how many messages go with them: the delivery log is deleted with
        its endpoint (nobody deletes it on its own), and listing it row by row would not end."""
        objs = list(objs)
        messages_count = Message.objects.filter(endpoint__in=objs).count()
        deleted = [f"Webhook endpoint: {endpoint.url}" for endpoint in objs]
        deleted.append(f"{messages_count} {plural(messages_count, 'message')} in the delivery log, with their attempts")
        return deleted, {"webhook endpoints": len(objs), "messages": messages_count}, set(), []

    def delete_model(self, request, obj: Endpoint) -> None:
        services.endpoint_delete(endpoint=obj, actor=_actor(request))

    def delete_queryset(self, request, queryset) -> None:
        for endpoint in queryset:
            services.endpoint_delete(endpoint=endpoint, actor=_actor(request))

    @admin.action(description="Rotate the signing secret of selected endpoints", permissions=["change"])
    def rotate_secret(self, request, queryset) -> None:
        for endpoint in queryset:
            secret = services.secret_rotate(endpoint=endpoint, actor=_actor(request))
            messages.success(request, f"New signing secret for {endpoint.url} (copy it now, it will not be shown "
                                      f"again; the previous one also signs until "
                                      f"{endpoint.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC): {secret}")

    @admin.action(description="Enable selected endpoints (resume delivery in order)", permissions=["change"])
    def enable(self, request, queryset) -> None:
        enabled = 0
        for endpoint in queryset.filter(status=Endpoint.Status.DISABLED):
            services.endpoint_enable(endpoint=endpoint, actor=_actor(request))
            enabled += 1
        messages.success(request, f"Enabled {enabled} {plural(enabled, 'endpoint')}.")

    @admin.action(description="Disable selected endpoints", permissions=["change"])
    def disable(self, request, queryset) -> None:
        disabled = 0
        for endpoint in queryset.filter(status=Endpoint.Status.ENABLED):
            services.endpoint_disable(endpoint=endpoint, actor=_actor(request),
                                      reason=f"Disabled by {request.user.get_username()} in Django admin.")
            disabled += 1
        messages.success(request, f"Disabled {disabled} {plural(disabled, 'endpoint')}; their messages wait.")


class AttemptInline(ReadOnlyInline):
    model = Attempt
    fields = ("attempted_at", "succeeded", "status_code", "latency_ms", "response", "error")
    show_change_link = False
    ordering = ("-id",)


@admin.register(Message)
class MessageAdmin(BigTableAdmin):
    """The delivery log: one row per message, its attempts inline."""

    list_display = ("id", "webhook_id", "endpoint", "event_type", "status", "attempts", "last_status_code",
                    "last_latency_ms", "created_at", "delivered_at")
    list_filter = ("status", "endpoint")
    list_select_related = ("endpoint",)
    search_fields = ("event_type__exact", "customer_id__exact")
    search_help_text = "Exact event type (message.sent) or customer id."
    actions = ("replay",)
    inlines = (AttemptInline,)
    fields = ("webhook_id", "endpoint", "event_type", "event_id", "customer_id", "status", "attempts",
              "next_attempt_at", "last_attempt_at", "last_status_code", "last_latency_ms", "last_response",
              "last_error", "payload", "created_at", "delivered_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the log is history; only the replay action acts on it

    def has_replay_permission(self, request) -> bool:
        # Replaying sends on the endpoint's behalf: whoever may change endpoints may.
        return request.user.has_perm("webhooks.change_endpoint")

    @admin.action(description="Replay selected messages (same webhook-id)", permissions=["replay"])
    def replay(self, request, queryset) -> None:
        count = 0
        for message in queryset.select_related("endpoint"):
            services.message_replay(message=message, actor=_actor(request))
            count += 1
        messages.success(request, f"Queued {count} {plural(count, 'message')} to be sent again.")
