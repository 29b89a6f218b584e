"""Who may see what: the single place every page, export and API filters by.

Roles are Django groups: `security-officer` (everything, manages clusters and scans),
`auditor` (read-only, everything, exports) and `team-lead` (read-only, only the namespaces
granted to them or their groups by NamespaceGrant). A superuser is a security officer.
An object outside a user's scope answers 404, whatever the URL.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet

from compliance.audit.log import Denied
from compliance.models import Cluster, Finding, NamespaceGrant
from compliance.rules import gate
from compliance.vocabulary import AUDITOR, LEAD, OFFICER, ROLES  # noqa: F401 - access.OFFICER


def glob_regex(glob: str) -> str:
    """A namespace glob as an anchored regular expression (for PostgreSQL's ~)."""
    return (
        "^"
        + "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in glob)
        + "$"
    )


@dataclass(frozen=True)
class Scope:
    """What one user may see."""

    user_id: int | None
    role: str | None  # OFFICER, AUDITOR, LEAD or None
    grants: tuple[tuple[int | None, str], ...] = ()  # (cluster id or None, namespace glob)

    @property
    def fleet(self) -> bool:
        """Sees every cluster and namespace."""
        return self.role in (OFFICER, AUDITOR)

    @property
    def can_manage(self) -> bool:
        return self.role == OFFICER

    @property
    def can_export(self) -> bool:
        return self.role in (OFFICER, AUDITOR)

    @property
    def key(self) -> str:
        """Identifies what this scope sees, for caches shared by equal scopes."""
        return (
            "fleet"
            if self.fleet
            else "g:" + ";".join(f"{c or '*'}/{g}" for c, g in sorted(self.grants, key=str))
        )

    def q(self, cluster: str = "cluster_id", namespace: str = "namespace") -> Q:
        """A filter for rows that carry a cluster and a namespace."""
        if self.fleet:
            return Q()
        if not self.grants:
            return Q(pk__in=[])
        q = Q(pk__in=[])
        for cluster_id, glob in self.grants:
            part = (
                Q(**{namespace: glob})
                if "*" not in glob and "?" not in glob
                else Q(**{f"{namespace}__regex": glob_regex(glob)})
            )
            if cluster_id is not None:
                part &= Q(**{cluster: cluster_id})
            q |= part
        return q

    def allows(self, cluster_id: int, namespace: str) -> bool:
        if self.fleet:
            return True
        return any(
            (c is None or c == cluster_id) and fnmatch.fnmatchcase(namespace, g)
            for c, g in self.grants
        )

    def cluster_ids(self) -> set[int] | None:
        """Clusters this scope may see something in (None: all)."""
        if self.fleet or any(c is None for c, _ in self.grants):
            return None
        return {c for c, _ in self.grants if c is not None}


def role_of(group_names: set[str], superuser: bool = False) -> str | None:
    """The role a person has: a superuser is an officer, else the highest of the role
    groups they are in (officer, auditor, team lead). Pages and notifications ask this."""
    if superuser:
        return OFFICER
    return next((r for r in ROLES if r in group_names), None)


def roles_of(user_ids) -> dict[int, str | None]:
    """role_of for many users at once (one query)."""
    groups: dict[int, set[str]] = {pk: set() for pk in user_ids}
    for pk, name in User.groups.through.objects.filter(user_id__in=list(groups)).values_list(
        "user_id", "group__name"
    ):
        groups[pk].add(name)
    superusers = set(
        User.objects.filter(pk__in=list(groups), is_superuser=True).values_list("pk", flat=True)
    )
    return {pk: role_of(names, pk in superusers) for pk, names in groups.items()}


def scope_for(user) -> Scope:
    """The user's scope (two queries: groups and grants), cached on the user object."""
    if not getattr(user, "is_authenticated", False):
        return Scope(None, None)
    cached = getattr(user, "_welkin_scope", None)
    if cached is not None:
        return cached
    if user.is_superuser:
        scope = Scope(user.pk, OFFICER)
    else:
        role = role_of(set(user.groups.values_list("name", flat=True)))
        grants: tuple = ()
        if role == LEAD:
            grants = tuple(
                NamespaceGrant.objects.filter(Q(user=user) | Q(group__in=user.groups.all()))
                .values_list("cluster_id", "namespace")
                .distinct()
            )
        scope = Scope(user.pk, role, grants)
    user._welkin_scope = scope
    return scope


def clusters(scope: Scope) -> QuerySet[Cluster]:
    ids = scope.cluster_ids()
    qs = Cluster.objects.all()
    if scope.role is None:
        return qs.none()
    return qs if ids is None else qs.filter(pk__in=ids)


def cluster_or_404(scope: Scope, name: str) -> Cluster:
    cluster = (
        clusters(scope).select_related("last_complete_scan", "last_scan").filter(name=name).first()
    )
    if cluster is None:
        raise Denied("No such cluster")
    return cluster


def namespace_or_404(scope: Scope, cluster: Cluster, namespace: str) -> str:
    try:
        gate.label(namespace, "namespace")  # nothing else can be stored
    except gate.Rejected:
        raise Denied("No such namespace") from None
    if not scope.allows(cluster.pk, namespace):
        raise Denied("No such namespace")
    return namespace


def findings(scope: Scope) -> QuerySet[Finding]:
    if scope.role is None:
        return Finding.objects.none()
    return Finding.objects.filter(scope.q())


def finding_or_404(scope: Scope, pk: int) -> Finding:
    if not 0 < pk < 2**63:  # beyond bigint: no such row (the database would raise)
        raise Denied("No such finding")
    f = findings(scope).select_related("cluster").filter(pk=pk).first()
    if f is None:
        raise Denied("No such finding")
    return f


def require_manage(scope: Scope) -> None:
    if not scope.can_manage:
        raise Denied("Not found")
