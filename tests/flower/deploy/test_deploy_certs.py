"""`fedlab certs init`: CA, server certificate for the given names, Flower-compatible device keys."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import REPO, run_fedlab


def test_certs_init_writes_a_ca_a_server_cert_and_device_keys(tmp_path):
    out = tmp_path / "certs"
    result = run_fedlab(
        "certs",
        "init",
        str(out),
        "--host",
        "fl.example.org",
        "--host",
        "10.0.0.5",
        "--devices",
        "2",
        home=tmp_path / "h",
    )
    assert result.returncode == 0, result.stderr
    assert "[deployment] device_keys" in result.stdout and "--root-cert" in result.stdout
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    for i in (1, 2):
        private = serialization.load_ssh_private_key((out / "devices" / f"device-{i}.key").read_bytes(), None)
        public = serialization.load_ssh_public_key((out / "devices" / f"device-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(
            public, ec.EllipticCurvePublicKey
        )
        assert private.public_key().public_numbers() == public.public_numbers()
        assert (out / "devices" / f"device-{i}.key").stat().st_mode & 0o077 == 0
    assert (out / "server.key").stat().st_mode & 0o077 == 0
    again = run_fedlab("certs", "init", str(out), home=tmp_path / "h")
    assert again.returncode == 2 and "never overwrites keys" in again.stderr


def test_default_names_are_localhost_and_loopback(tmp_path):
    from fedlab.flower.deploy import init_certificates

    files = init_certificates(tmp_path / "c", devices=0)
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert files.device_keys == ()


def test_certs_init_inside_a_git_work_tree_warns_about_the_private_keys(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    inside = run_fedlab("certs", "init", str(repo / "certs"), "--devices", "1", home=tmp_path / "h1")
    assert inside.returncode == 0, inside.stderr
    [warning] = [line for line in inside.stderr.splitlines() if line.startswith("warning:")]
    assert str(repo) in warning and "private keys" in warning
    outside = run_fedlab("certs", "init", str(tmp_path / "elsewhere"), "--devices", "1", home=tmp_path / "h2")
    assert outside.returncode == 0 and "warning:" not in outside.stderr


def test_the_default_deployment_locations_are_ignored_by_git():
    """certs/, state/, data/ and device-state/ as the README's commands create them, and any *.key."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["certs/ca.key", "certs/devices/device-1.key", "state/superlink.sqlite", "data/device-1.csv",
             "device-state/budget.sqlite", "server/server.key"]  # fmt: skip
    result = subprocess.run(
        ["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert sorted(result.stdout.split()) == sorted(paths)
