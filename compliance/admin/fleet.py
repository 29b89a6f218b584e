"""Admin: clusters are added from a kubeconfig through the same checks as add_cluster."""

from django import forms
from django.contrib import admin

from compliance.admin.audited import AuditedAdmin
from compliance.collect import clusters
from compliance.models import (
    Cluster,
    Finding,
    ImageCache,
    ImageUserOverride,
    NamespaceGrant,
    Registry,
    ScanRun,
)
from compliance.rules.kubeconfig import MAX_KUBECONFIG_BYTES


class ClusterForm(forms.ModelForm):
    kubeconfig = forms.FileField(
        required=False,
        help_text=(
            "Inline credentials only: exec plugins, auth-providers and file paths are refused. "
            "Leave empty to keep the stored credentials."
        ),
    )
    kubeconfig_context = forms.CharField(required=False, help_text="Default: current-context")

    class Meta:
        model = Cluster
        fields = ["name", "source", "schedule_minutes", "enabled"]

    def clean(self):
        """The checks of clusters.add_cluster (name, schedule, kubeconfig), one home."""
        data = super().clean()
        upload = data.get("kubeconfig")
        # Read at most one byte over the limit: parse_kubeconfig refuses it, naming it.
        self._kubeconfig = upload.read(MAX_KUBECONFIG_BYTES + 1) if upload else None
        try:
            clusters.check_name(data.get("name", ""))
            clusters.check_schedule(data.get("schedule_minutes"))
            if self._kubeconfig is not None:
                self._context, self._creds = clusters.read_kubeconfig(
                    self._kubeconfig, data.get("kubeconfig_context") or None
                )
        except clusters.ClusterError as e:
            raise forms.ValidationError(str(e)) from None
        if (
            self._kubeconfig is None
            and data.get("source") == "kubeconfig"
            and not (self.instance.pk and self.instance.credentials_encrypted)
        ):
            raise forms.ValidationError("a kubeconfig is required for this source")
        return data

    def save(self, commit=True):
        cluster = super().save(commit=False)
        if self._kubeconfig is not None:
            cluster.context = self._context
            cluster.set_credentials(self._creds)
        if commit:
            cluster.save()
        return cluster


@admin.register(Cluster)
class ClusterAdmin(AuditedAdmin):
    form = ClusterForm
    list_display = ["name", "source", "server", "schedule_minutes", "enabled", "next_scan_at"]
    readonly_fields = ["server", "context", "next_scan_at", "last_scan", "last_complete_scan"]


@admin.register(ScanRun)
class ScanRunAdmin(admin.ModelAdmin):
    list_display = [
        "cluster",
        "status",
        "trigger",
        "started_at",
        "finished_at",
        "pods",
        "findings_opened",
        "findings_changed",
        "findings_resolved",
    ]
    list_filter = ["status", "cluster"]
    raw_id_fields = ["cluster"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # scans anchor the append-only finding history


@admin.register(Finding)
class FindingAdmin(admin.ModelAdmin):
    list_display = [
        "cluster",
        "namespace",
        "workload_kind",
        "workload_name",
        "container",
        "state",
        "pods",
        "resolved_at",
    ]
    list_filter = ["state", "cluster"]
    search_fields = ["namespace", "workload_name", "image"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # evidence: only scans change findings, each change an event

    def has_delete_permission(self, request, obj=None):
        return False


class WriteOnlySecret:
    """A form's password-like field, stored encrypted by the model's setter: a value
    replaces it, the clear box removes it, empty keeps it (it is never shown)."""

    secret_field, clear_field, setter = "password", "clear_password", "set_password"

    def save(self, commit=True):
        obj = super().save(commit=False)
        if self.cleaned_data.get(self.clear_field):
            getattr(obj, self.setter)(None)
        elif self.cleaned_data.get(self.secret_field):
            getattr(obj, self.setter)(self.cleaned_data[self.secret_field])
        if commit:
            obj.save()
        return obj


class RegistryForm(WriteOnlySecret, forms.ModelForm):
    password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted. Leave empty to keep the current one.",
    )
    clear_password = forms.BooleanField(required=False)

    class Meta:
        model = Registry
        fields = ["host", "username", "ca_pem", "plain_http"]

    def clean_ca_pem(self):
        pem = self.cleaned_data.get("ca_pem", "").strip()
        if pem:
            import ssl

            try:
                ssl.create_default_context(cadata=pem)
            except (ssl.SSLError, TypeError, ValueError) as e:  # TypeError: non-ASCII
                raise forms.ValidationError(f"not a usable PEM CA certificate: {e}") from None
        return pem


@admin.register(Registry)
class RegistryAdmin(AuditedAdmin):
    form = RegistryForm
    list_display = ["host", "username", "plain_http"]


@admin.register(ImageUserOverride)
class ImageUserOverrideAdmin(AuditedAdmin):
    list_display = ["pattern", "user", "note", "created_at"]
    search_fields = ["pattern", "note"]


@admin.register(ImageCache)
class ImageCacheAdmin(admin.ModelAdmin):
    list_display = ["key", "user", "error", "resolved_at", "expires_at"]
    search_fields = ["key"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(NamespaceGrant)
class NamespaceGrantAdmin(AuditedAdmin):
    list_display = ["user", "group", "cluster", "namespace"]
    list_filter = ["cluster", "group"]
    search_fields = ["namespace", "user__username", "group__name"]
