"""Admin for single sign-on mapping rules, provider identities, notification contacts
and the outbox (read-only)."""

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import TokenProxy

from compliance.admin.audited import AuditedAdmin, KeptAdmin
from compliance.admin.fleet import WriteOnlySecret
from compliance.models.identity import GroupMapping, OidcIdentity
from compliance.models.notify import Contact, Delivery
from compliance.notify import outbound


@admin.register(GroupMapping)
class GroupMappingAdmin(AuditedAdmin):
    list_display = ["claim", "value", "role", "cluster", "namespace", "note"]
    list_filter = ["claim", "role"]
    search_fields = ["value", "namespace", "note"]


@admin.register(OidcIdentity)
class OidcIdentityAdmin(KeptAdmin):
    list_display = ["user", "issuer", "subject", "last_login_at"]
    search_fields = ["user__username", "subject"]
    readonly_fields = ["user", "issuer", "subject", "last_login_at", "claims"]
    raw_id_fields = ["person"]  # link it to the local account of the same person

    def has_add_permission(self, request):
        return False


class ContactForm(WriteOnlySecret, forms.ModelForm):
    secret_field, clear_field, setter = "secret", "clear_secret", "set_secret"
    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        max_length=200,
        help_text="Webhooks: the HMAC-SHA256 key the receiver checks (stored encrypted). "
        "Leave empty to keep the stored one; without one, WELKIN_WEBHOOK_SECRET signs.",
    )
    clear_secret = forms.BooleanField(required=False, help_text="Remove the stored secret")

    class Meta:
        model = Contact
        fields = [
            "name",
            "channel",
            "email",
            "url",
            "webhook_format",
            "cluster",
            "namespace",
            "enabled",
        ]

    def clean_secret(self):
        value = self.cleaned_data.get("secret", "")
        if value and len(value) < 16:
            raise forms.ValidationError("at least 16 characters")
        return value

    def clean(self):
        data = super().clean()
        has_own = bool(data.get("secret")) or (
            self.instance.pk is not None
            and bool(self.instance.secret_encrypted)
            and not data.get("clear_secret")
        )
        if data.get("channel") == "webhook" and data.get("url"):
            try:
                outbound.resolve(data["url"])
            except outbound.Refused as e:
                self.add_error("url", str(e))
        if data.get("channel") == "webhook" and not has_own:
            # With the shared WELKIN_WEBHOOK_SECRET, any receiver could sign messages that
            # the others take for welkin-dash's. (A webhook saved before keeps signing with
            # it until it is next changed: then it needs its own.)
            self.add_error("secret", "a webhook needs its own secret (16 characters or more)")
        return data


@admin.register(Contact)
class ContactAdmin(AuditedAdmin):
    form = ContactForm
    list_display = ["name", "channel", "email", "url", "cluster", "namespace", "enabled"]
    list_filter = ["channel", "enabled"]


@admin.register(Delivery)
class DeliveryAdmin(KeptAdmin):
    list_display = [
        "event",
        "destination",
        "channel",
        "address",
        "status",
        "attempts",
        "created_at",
    ]
    list_filter = ["status", "channel"]
    readonly_fields = [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# Users and their groups (roles) are who sees what: their changes are audited too.
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    pass


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    pass


# DRF's own token admin lists every key (a credential) and adds and deletes tokens
# unaudited: here tokens are only listed, by owner and age, never by key; Settings revokes
# them (audited) and `manage.py drf_create_token` issues them.
admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["user", "created"]
    list_display_links = None  # a token's URL would carry its key
    search_fields = ["user__username"]
    ordering = ["user__username"]
    actions = None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
