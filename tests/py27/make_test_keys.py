"""Make throwaway OIDC signing keys and certificates for the receiver's OIDC tests.

    python3 make_test_keys.py OUT_DIR      (Python 3 with `cryptography`: the project's .venv)

test_receiver_oidc.py runs this into a temporary directory at every run (Python 2.7 has no
x509 tooling), so no key is ever committed.

    oidc-test-key-{a,b}.pem   RSA private keys (PKCS#1 PEM, what `rsa` 4.5 loads under py2.7)
    oidc-test-cert-{a,b}.pem  self-signed x509 certificates of those keys (Google v1 format)
"""

import datetime as dt
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

HERE = Path(sys.argv[1])

for name in ("a", "b"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (HERE / f"oidc-test-key-{name}.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    subject = x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, f"TEST ONLY pubsub-receiver OIDC test key {name}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
            .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc))
            .sign(key, hashes.SHA256()))
    (HERE / f"oidc-test-cert-{name}.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM))
