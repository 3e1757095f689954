"""Certificates and keys of a deployment: a private CA, the server certificate, device keys.

Writes them (:func:`init_certificates`) and checks the files a server or device is given
before Flower reads them, so a bad file is refused with one line.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlab.core.errors import ConfigError
from fedlab.flower.deploy.errors import DeploymentError


@dataclass(frozen=True)
class CertificateFiles:
    """What ``fedlab certs init`` wrote and where each file goes.

    Attributes:
        ca_cert: The CA certificate: on the server and on every device (``--root-cert``).
        ca_key: The CA private key: keep offline; only needed to issue new certificates.
        server_cert: The server certificate (``[deployment] server_cert``).
        server_key: The server private key (``[deployment] server_key``), server only.
        device_keys: Per device, (private key, public key): the private key goes on the
            device (``--key``), the public key into ``[deployment] device_keys``.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    device_keys: tuple[tuple[Path, Path], ...]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def init_certificates(
    out_dir: Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1"), devices: int = 3, days: int = 365
) -> CertificateFiles:
    """Create a private CA, a server certificate for ``hosts`` and ``devices`` device key pairs.

    Keys are EC P-384. Device keys are in OpenSSH format, which Flower's SuperNode
    authentication reads (``--auth-supernode-private-key``, ``flwr supernode register``).
    For development and tests: an organisation should use its own CA (see the README).

    Security: the server certificate lets devices refuse an impostor server; device
    keys let the server refuse unregistered devices. Does not protect the CA key or
    device private keys once copied off this machine (files are written mode 0600).

    Raises:
        ConfigError: If ``out_dir`` already holds certificates (never overwritten), no
            host is given or ``devices`` is negative.
    """
    if not hosts:
        raise ConfigError("--host: give at least one host name or IP address for the server certificate")
    if devices < 0:
        raise ConfigError(f"--devices must be >= 0; got {devices}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = CertificateFiles(
        ca_cert=out_dir / "ca.pem",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        device_keys=tuple(
            (out_dir / "devices" / f"device-{i}.key", out_dir / "devices" / f"device-{i}.pub")
            for i in range(1, devices + 1)
        ),
    )
    existing = [p for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key) if p.exists()]
    existing += [p for pair in files.device_keys for p in pair if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: already exists; certs init never overwrites keys (use a new DIR)")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedlab private CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem, pkcs8, none = (
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    _write_private(files.ca_key, ca_key.private_bytes(pem, pkcs8, none))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    _write_private(files.server_key, server_key.private_bytes(pem, pkcs8, none))
    if files.device_keys:
        (out_dir / "devices").mkdir(exist_ok=True)
    for private_path, public_path in files.device_keys:
        key = ec.generate_private_key(ec.SECP384R1())
        _write_private(private_path, key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, none))
        public_path.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            + b"\n"
        )
    return files


def check_root_cert(path: Path) -> None:
    """Refuse a missing or unreadable CA certificate with one line."""
    if not path.is_file():
        raise DeploymentError(f"--root-cert: certificate file not found: {path}")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        raise DeploymentError(f"--root-cert: not a PEM certificate: {path}") from None


def check_device_key(path: Path) -> None:
    """Refuse a missing key or one Flower's node authentication cannot use (EC, OpenSSH)."""
    if not path.is_file():
        raise DeploymentError(f"--key: device private key not found: {path}")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, UnsupportedAlgorithm):
        raise DeploymentError(
            f"--key: not an OpenSSH EC private key (as written by `fedlab certs init`): {path}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeploymentError(f"--key: node authentication needs an EC (NIST curve) key: {path}")


def check_public_key(path: Path) -> None:
    """Refuse a missing device public key or one that is not an OpenSSH EC key (one line)."""
    if not path.is_file():
        raise ConfigError(f"deployment.device_keys: public key not found: {path}")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"deployment.device_keys: not an OpenSSH public key: {path}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"deployment.device_keys: not an EC public key: {path}")
