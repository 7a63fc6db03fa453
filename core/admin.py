"""Admin building blocks every app uses, and the audit trail."""

from __future__ import annotations

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.utils.functional import cached_property

from .models import AuditEntry


class LargeTablePaginator(Paginator):
    """Exact counts for filtered lists and small tables, the planner's estimate for a whole big one.

    ``count(*)`` over millions of events takes seconds, and the changelist only needs it
    to number the pages.
    """

    ESTIMATE_ABOVE = 100_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if hasattr(queryset, "query") and not queryset.query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [queryset.model._meta.db_table],
                )
                row = cursor.fetchone()
            if row and row[0] > self.ESTIMATE_ABOVE:
                return row[0]
        return super().count


class BigTableAdmin(admin.ModelAdmin):
    paginator = LargeTablePaginator
    # The "N total" link would run a second count(*) over the whole table.
    show_full_result_count = False


class ReadOnlyMixin:
    """Viewable history: nobody adds, changes or deletes it from the admin."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(ReadOnlyMixin, BigTableAdmin):
    pass


class ReadOnlyInline(ReadOnlyMixin, admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "actor", "action", "object_type", "object_id")
    date_hierarchy = "occurred_at"
    search_fields = ("actor__exact", "action__exact", "object_id__exact")
    search_help_text = "Exact actor (admin:alice, api:crm-sync), action (api_key.created) or object id."
