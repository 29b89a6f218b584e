"""Single sign-on data: the rules that map a provider's claims to a role and namespace
grants, and which provider account a user is. Re-exported by compliance/models/."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from compliance.models.fleet import Cluster
from compliance.params import BadParameter, clean_text
from compliance.rules.gate import NAMESPACE_GLOB_RE
from compliance.vocabulary import LEAD, ROLE

CLAIMS = [
    ("groups", "Group (the groups claim)"),
    ("roles", "Role (the roles claim)"),
    ("email_domain", "E-mail domain (of a verified e-mail)"),
]
ROLE_CHOICES = ROLE.choices  # the role groups (compliance/vocabulary.py)
VALUE_MAX = 255


class GroupMapping(models.Model):
    """One rule: people whose `claim` holds `value` get `role`; for a team lead, also the
    namespaces `namespace` (a name or glob) of `cluster` (empty: every cluster).

    Applied at every single sign-on: a person gets the highest role of the rules they
    match and the grants of all of them; matching none, they get no access."""

    claim = models.CharField(max_length=16, choices=CLAIMS)
    value = models.CharField(max_length=VALUE_MAX, help_text="e.g. platform-team, example.com")
    role = models.CharField(max_length=16, choices=ROLE_CHOICES)
    cluster = models.ForeignKey(
        "compliance.Cluster", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    namespace = models.CharField(
        max_length=63, blank=True, help_text="Team leads: a namespace, or a glob (team-a-*)"
    )
    note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["claim", "value", "role"]
        constraints = [
            models.UniqueConstraint(
                fields=["claim", "value", "role", "cluster", "namespace"],
                name="one_mapping_per_rule",
            )
        ]

    def __str__(self) -> str:
        where = f" {self.cluster or '*'}/{self.namespace}" if self.namespace else ""
        return f"{self.claim}={self.value} -> {self.role}{where}"

    def clean(self) -> None:
        try:
            clean_text(self.value or "", "value", VALUE_MAX)
        except BadParameter as e:
            raise ValidationError({"value": e.problem}) from None
        if not (self.value or "").strip():
            raise ValidationError({"value": "a group, role or domain"})
        if self.claim == "email_domain":
            self.value = self.value.strip().lower().lstrip("@")
        if self.role == LEAD:
            if not NAMESPACE_GLOB_RE.match(self.namespace or ""):
                raise ValidationError(
                    {"namespace": "a team lead needs a namespace name or glob (team-a-*)"}
                )
        elif self.namespace or self.cluster_id:
            raise ValidationError(
                {"namespace": "officers and auditors see every namespace: leave it empty"}
            )


class OidcIdentity(models.Model):
    """The provider account (issuer, subject) a user signs in as."""

    user = models.OneToOneField("auth.User", on_delete=models.CASCADE, related_name="oidc")
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    last_login_at = models.DateTimeField(default=timezone.now)
    # What the last sign-in matched on, for the admin (bounded: see identity.py).
    claims = models.JSONField(default=dict, blank=True)
    # The local account of the same person (linked by an administrator): four eyes count
    # the two accounts as one, and the register names the person.
    person = models.ForeignKey(
        "auth.User",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="linked_identities",
        help_text="The local account of the same person: they never decide on each "
        "other's requests.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="one_user_per_subject")
        ]
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"

    def __str__(self) -> str:
        return f"{self.user_id}: {self.issuer} {self.subject}"


class NamespaceGrant(models.Model):
    """Lets a team lead (a user, or everyone in a group) see namespaces.

    `cluster` empty means every cluster; `namespace` is a name or a glob (`team-a-*`)."""

    user = models.ForeignKey(
        "auth.User",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="namespace_grants",
    )
    group = models.ForeignKey(
        "auth.Group",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="namespace_grants",
    )
    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    namespace = models.CharField(max_length=63, help_text="A namespace, or a glob: team-a-*")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False) | Q(group__isnull=False),
                name="grant_has_user_or_group",
            )
        ]

    def __str__(self) -> str:
        who = self.user or self.group
        return f"{who}: {self.cluster or '*'}/{self.namespace}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if not NAMESPACE_GLOB_RE.match(self.namespace or ""):
            raise ValidationError(
                {
                    "namespace": "a namespace name (lowercase letters, digits, "
                    "'-') or a glob with * and ?"
                }
            )
        if (self.user_id is None) == (self.group_id is None):
            raise ValidationError("grant to a user or to a group (one of them)")
