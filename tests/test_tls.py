"""The local CA and the server certificate of --tls-self-signed, and the one port's context."""

from __future__ import annotations

import socket
import ssl
import stat
import threading

import pytest

from pubsub_emulator.tls import self_signed, server_context


def _handshake(files, client: ssl.SSLContext, server_name: str, alpn: list[str]) -> str | None:
    """Serve one TLS handshake on a loopback socket; the ALPN protocol the client got."""
    context = server_context(files.cert, files.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client.set_alpn_protocols(alpn)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with client.wrap_socket(raw, server_hostname=server_name) as tls:
                    chosen = tls.selected_alpn_protocol()
                    tls.sendall(b"x")
                    return chosen
        finally:
            thread.join(10)


def test_self_signed_is_made_once_and_kept_private(tmp_path):
    files = self_signed(tmp_path, ["localhost", "127.0.0.1"])
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls" / "ca-key.pem").stat().st_mode) == 0o600
    cert, ca = files.cert.read_bytes(), files.ca.read_bytes()
    again = self_signed(tmp_path, ["localhost", "127.0.0.1"])
    assert again.cert.read_bytes() == cert and again.ca.read_bytes() == ca


def test_a_new_host_name_reissues_the_certificate_from_the_same_ca(tmp_path):
    files = self_signed(tmp_path, ["localhost"])
    ca, cert = files.ca.read_bytes(), files.cert.read_bytes()
    more = self_signed(tmp_path, ["localhost", "pubsub.internal", "10.1.2.3"])
    assert more.ca.read_bytes() == ca and more.cert.read_bytes() != cert
    client = ssl.create_default_context(cafile=str(more.ca))
    assert _handshake(more, client, "pubsub.internal", ["h2"]) == "h2"


@pytest.mark.parametrize("offered, chosen", [(["h2", "http/1.1"], "h2"),
                                             (["http/1.1"], "http/1.1")])
def test_clients_trusting_the_ca_get_their_protocol(tmp_path, offered, chosen):
    files = self_signed(tmp_path, ["localhost", "127.0.0.1"])
    client = ssl.create_default_context(cafile=str(files.ca))
    assert _handshake(files, client, "localhost", offered) == chosen
    assert _handshake(files, client, "127.0.0.1", offered) == chosen


def test_a_client_trusting_another_ca_fails_the_handshake(tmp_path):
    files = self_signed(tmp_path / "one", ["localhost"])
    other = self_signed(tmp_path / "two", ["localhost"])
    client = ssl.create_default_context(cafile=str(other.ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files, client, "localhost", ["h2"])


def test_a_name_the_certificate_does_not_cover_fails(tmp_path):
    files = self_signed(tmp_path, ["localhost"])
    client = ssl.create_default_context(cafile=str(files.ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files, client, "elsewhere.example", ["h2"])
