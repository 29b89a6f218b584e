"""Admin changes that decide who sees what, who hears what, and how images are judged
(users and their groups, grants, mapping rules, contacts, identities, clusters, registries,
image users, deliveries) are written to the audit log: added, changed (the fields, never
their values) or deleted."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied

from compliance.audit import log


class AuditedAdmin(admin.ModelAdmin):
    def _record(self, request, obj, change: str, fields=()) -> None:
        log.record_change(request, obj._meta.label_lower, obj.pk, change, fields, str(obj))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        self._record(request, obj, "changed" if change else "added", form.changed_data)

    def delete_model(self, request, obj):
        pk = obj.pk
        super().delete_model(request, obj)
        obj.pk = pk
        self._record(request, obj, "deleted")

    def delete_queryset(self, request, queryset):
        gone = list(queryset)
        super().delete_queryset(request, queryset)
        for obj, pk in ((o, o.pk) for o in gone):
            obj.pk = pk
            self._record(request, obj, "deleted")


class KeptAdmin(AuditedAdmin):
    """Records that are evidence (deliveries, provider identities): not deleted here one
    by one, though they go with what they belong to (a cluster, a user) when that is."""

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def delete_view(self, request, object_id, extra_context=None):
        raise PermissionDenied("kept as evidence: delete what it belongs to instead")
