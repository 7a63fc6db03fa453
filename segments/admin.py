from django.contrib import admin

from .models import Segment, SegmentSize


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    """Segments are defined in the app (validation, cycles, recomputation); admin shows them.

    Memberships have a composite primary key, which admin cannot list; the segment pages
    and the API show them."""

    list_display = ("name", "kind", "status", "member_count", "computed_at", "changed_at", "last_full_ms", "last_lag_ms")
    list_filter = ("kind", "status")
    search_fields = ("name", "description")
    readonly_fields = (
        "kind", "rules", "compiled", "dependencies", "status", "compute_phase", "compute_error", "member_count",
        "computed_at", "changed_at", "swept_at", "last_full_ms", "last_lag_ms", "created_by", "created_at", "updated_at",
    )
    fields = ("name", "description", *readonly_fields)

    def has_add_permission(self, request) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        from . import services

        services.segment_update(
            segment=Segment.objects.get(pk=obj.pk), actor=request.user.get_username(),
            name=form.cleaned_data["name"], description=form.cleaned_data["description"],
        )

    def delete_model(self, request, obj):
        from . import services

        services.segment_delete(segment=obj, actor=request.user.get_username())


@admin.register(SegmentSize)
class SegmentSizeAdmin(admin.ModelAdmin):
    list_display = ("segment", "at", "size")
    list_filter = ("segment",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
