"""Make throwaway keys and certificates for the python27 app tests.

    python3 make_test_keys.py OUT_DIR [oidc] [tls]   (Python 3 with `cryptography`: the .venv)

The tests run this into a temporary directory at every run (Python 2.7 has no x509 tooling),
so no key is ever committed. Default: oidc only.

oidc (test_receiver_oidc.py):
    oidc-test-key-{a,b}.pem   RSA private keys (PKCS#1 PEM, what `rsa` 4.5 loads under py2.7)
    oidc-test-cert-{a,b}.pem  self-signed x509 certificates of those keys (Google v1 format)
tls (test_sender_tls.py):
    tls-ca.pem, tls-other-ca.pem        two test CAs (the second one signs nothing)
    tls-server-cert.pem / -key.pem      server certificate from tls-ca.pem for DNS:localhost and
                                        IP:127.0.0.1 (+ its key)
    tls-ip-only-cert.pem / -key.pem     the same for IP:127.0.0.1 only (no DNS name)
    sa-key.pem / sa-public.pem          a service-account private key (PKCS#8, as Google's) and
                                        its public key (PKCS#1, what `rsa` 4.5 loads)
"""

import datetime as dt
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(sys.argv[1])
WHAT = set(sys.argv[2:]) or {"oidc"}
START = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
END = dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_key(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def builder(subject: x509.Name, issuer: x509.Name,
            key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(START).not_valid_after(END))


def oidc() -> None:
    for label in ("a", "b"):
        key = new_key()
        (HERE / f"oidc-test-key-{label}.pem").write_bytes(
            pem_key(key, serialization.PrivateFormat.TraditionalOpenSSL))
        subject = name(f"TEST ONLY pubsub-receiver OIDC test key {label}")
        cert = builder(subject, subject, key).sign(key, hashes.SHA256())
        (HERE / f"oidc-test-cert-{label}.pem").write_bytes(pem_cert(cert))


def ca(label: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = new_key()
    subject = name(f"TEST ONLY pubsub apps test CA {label}")
    cert = (builder(subject, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def server_cert(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, prefix: str,
                names: list[x509.GeneralName]) -> None:
    key = new_key()
    cert = (builder(name("TEST ONLY localhost"), ca_cert.subject, key)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (HERE / f"{prefix}-cert.pem").write_bytes(pem_cert(cert))
    (HERE / f"{prefix}-key.pem").write_bytes(
        pem_key(key, serialization.PrivateFormat.TraditionalOpenSSL))


def tls() -> None:
    ca_key, ca_cert = ca("a")
    (HERE / "tls-ca.pem").write_bytes(pem_cert(ca_cert))
    (HERE / "tls-other-ca.pem").write_bytes(pem_cert(ca("b")[1]))
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    server_cert(ca_key, ca_cert, "tls-server", [x509.DNSName("localhost"), loopback])
    server_cert(ca_key, ca_cert, "tls-ip-only", [loopback])
    sa_key = new_key()
    (HERE / "sa-key.pem").write_bytes(pem_key(sa_key, serialization.PrivateFormat.PKCS8))
    (HERE / "sa-public.pem").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))


if "oidc" in WHAT:
    oidc()
if "tls" in WHAT:
    tls()
