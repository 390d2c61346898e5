"""TLS for the one port: the server's SSL context, and a local CA for `--tls-self-signed`.

gRPC and REST share the port, so the context offers both protocols by ALPN ("h2" first, as
gRPC clients require it; "http/1.1" for REST clients); the front reads the first decrypted
bytes as it does without TLS. `--tls-self-signed` makes a private CA and a server certificate
signed by it in the data dir, once: clients trust the CA certificate (its path is logged), so
the server certificate can be re-issued for other host names without touching the clients.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("pubsub_emulator.tls")

ALPN_PROTOCOLS = ["h2", "http/1.1"]
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=825)  # the most browsers and Apple's TLS stack accept
TLS_DIR = "tls"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # the server certificate (PEM), followed by its issuer when self-signed
    key: Path  # its private key (PEM)
    ca: Path | None = None  # the CA clients should trust, when the emulator made it


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A TLS server context for the one port: TLS 1.2 or later, ALPN h2 and http/1.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


def certificate_names(cert: str | Path) -> list[str]:
    """The host names and addresses a PEM server certificate (its first) is valid for: its
    subject alternative names, else its common name."""
    parsed = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return ([str(name) for name in san.get_values_for_type(x509.DNSName)]
            + [str(address) for address in san.get_values_for_type(x509.IPAddress)])


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pubsub-emulator"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alt_names(hostnames: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_or_make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = _name("pubsub-emulator local CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _covers(cert_path: Path, ca: x509.Certificate, hostnames: list[str]) -> bool:
    """Whether an existing server certificate was issued by `ca` for all of `hostnames` and
    is valid for at least another day."""
    if not cert_path.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if cert.issuer != ca.subject:
        return False
    if cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < dt.timedelta(days=1):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(name in san for name in _subject_alt_names(hostnames))


def self_signed(data_dir: str | Path, hostnames: list[str]) -> TlsFiles:
    """A local CA and a server certificate for `hostnames`, under `data_dir`/tls.

    Made once and reused; the server certificate is issued again (by the same CA) when it does
    not cover every host name asked for, or is about to expire.
    """
    directory = Path(data_dir) / TLS_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca, ca_key = _load_or_make_ca(directory)
    files = TlsFiles(directory / "server.pem", directory / "server-key.pem", directory / "ca.pem")
    if _covers(files.cert, ca, hostnames):
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(hostnames[0]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + SERVER_LIFETIME)
            .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hostnames)),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                           + ca.public_bytes(serialization.Encoding.PEM))
    log.info("issued a TLS certificate for %s, signed by the local CA %s",
             ", ".join(hostnames), files.ca)
    return files
