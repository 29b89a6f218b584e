"""Kubeconfig safety: what parse_kubeconfig refuses, and why."""

import base64
import re

import pytest
import yaml

from compliance.rules import kubeconfig


@pytest.mark.parametrize(
    "user,field",
    [
        (
            {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}},
            "users[fake-user].user.exec is refused: an exec credential plugin runs a program",
        ),
        ({"auth-provider": {"name": "gcp"}}, "user.auth-provider is refused"),
        ({"tokenFile": "/var/run/token"}, "user.tokenFile is refused: a token file is a path"),
        (
            {"client-certificate": "/etc/c.crt", "client-key": "/etc/c.key"},
            "user.client-certificate is refused: a path on the worker's disk",
        ),
        ({"username": "admin", "password": "x"}, "user.username is refused"),
        ({}, "no credentials"),
    ],
)
def test_it_refuses_unsafe_user_fields(fake_kube, user, field):
    cfg = fake_kube.kubeconfig()
    cfg["users"][0]["user"] = user
    with pytest.raises(kubeconfig.KubeconfigError, match=re.escape(field)):
        kubeconfig.parse_kubeconfig(yaml.safe_dump(cfg))


@pytest.mark.parametrize(
    "cluster,message",
    [
        ({"certificate-authority": "/etc/ca.crt"}, "certificate-authority is refused"),
        ({"insecure-skip-tls-verify": True}, "TLS verification cannot be turned off"),
        ({"server": "http://127.0.0.1:8080"}, "expected an https:// URL"),
        ({"certificate-authority-data": "bm90IHBlbQ=="}, "the decoded data is not PEM"),
        ({"certificate-authority-data": "%%%"}, "not valid base64"),
    ],
)
def test_it_refuses_unsafe_cluster_fields(fake_kube, cluster, message):
    cfg = fake_kube.kubeconfig()
    cfg["clusters"][0]["cluster"].update(cluster)
    with pytest.raises(kubeconfig.KubeconfigError, match=message):
        kubeconfig.parse_kubeconfig(yaml.safe_dump(cfg))


def test_it_picks_the_named_context(fake_kube):
    cfg = fake_kube.kubeconfig()
    cfg["contexts"].append({"name": "other", "context": {"cluster": "fake", "user": "bad"}})
    with pytest.raises(kubeconfig.KubeconfigError, match="users: no entry named 'bad'"):
        kubeconfig.parse_kubeconfig(yaml.safe_dump(cfg), "other")
    with pytest.raises(kubeconfig.KubeconfigError, match="contexts: no entry named 'nope'"):
        kubeconfig.parse_kubeconfig(yaml.safe_dump(cfg), "nope")
    name, creds = kubeconfig.parse_kubeconfig(yaml.safe_dump(cfg))
    assert (name, creds.server, creds.token) == ("fake", fake_kube.url, "admin-token")
    assert creds.ca_data == fake_kube.ca_pem.decode()


@pytest.mark.parametrize(
    "text,message",
    [
        ("{", "not valid YAML"),
        ("[]", "expected a kubeconfig"),
        ("kind: Pod", "expected Config"),
        ("x" * (2 << 20), "larger than"),
    ],
)
def test_it_rejects_malformed_kubeconfigs(text, message):
    with pytest.raises(kubeconfig.KubeconfigError, match=message):
        kubeconfig.parse_kubeconfig(text)


def test_it_accepts_client_certificates_inline(fake_kube):
    cfg = fake_kube.kubeconfig()
    pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    cfg["users"][0]["user"] = {
        "client-certificate-data": pem.decode(),
        "client-key-data": pem.decode(),
    }
    _, creds = kubeconfig.parse_kubeconfig(yaml.safe_dump(cfg))
    assert creds.client_cert_data.startswith("-----BEGIN CERTIFICATE")
