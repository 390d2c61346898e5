# -*- coding: utf-8 -*-
"""pubsub-receiver's optional OIDC push verification (PUBSUB_OIDC_AUDIENCE) under Python 2.7.

Tokens are signed here with throwaway keys that make_test_keys.py makes for each run
(pure-Python `rsa`, as Google signs push tokens: RS256, kid header); the certificates are
served, as Google's v1 format
`{kid: x509 PEM}`, by a real HTTP server in a thread.
"""
import atexit
import base64
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time

import pytest
import webtest

from helpers import RecordingServer, load_app

main = load_app('pubsub-receiver')
import rsa  # noqa: E402  (vendored in pubsub-receiver/lib)
from pubsub_shared import auth, oidc  # noqa: E402

TOKEN = 'test-token-0123456789abcdef'
AUDIENCE = 'https://receiver.example.com/pubsub/push'
EMAIL = 'push@test.iam.gserviceaccount.com'
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = tempfile.mkdtemp(prefix='oidc-test-keys-')
atexit.register(shutil.rmtree, FIXTURES, True)
# Fresh throwaway keys for every run, made with Python 3's `cryptography` (the project's venv).
_env = dict(os.environ)
_env.pop('PYTHONPATH', None)  # the Python 2.7 test path must not leak into Python 3
subprocess.check_call([
    os.environ.get('PY3') or os.path.join(HERE, '..', '..', '.venv', 'bin', 'python'),
    os.path.join(HERE, 'make_test_keys.py'), FIXTURES], env=_env)
KID_A, KID_B = 'a' * 40, 'b' * 40


def _read(name):
    with open(os.path.join(FIXTURES, name), 'rb') as f:
        return f.read()


KEY_A = rsa.PrivateKey.load_pkcs1(_read('oidc-test-key-a.pem'))
KEY_B = rsa.PrivateKey.load_pkcs1(_read('oidc-test-key-b.pem'))
CERT_A = _read('oidc-test-cert-a.pem').decode('ascii')
CERT_B = _read('oidc-test-cert-b.pem').decode('ascii')


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b'=').decode('ascii')


def claims(**overrides):
    now = int(time.time())
    sub = '112233445566778899001'
    values = {'iss': 'https://accounts.google.com', 'aud': AUDIENCE, 'email': EMAIL,
              'email_verified': True, 'sub': sub, 'azp': sub, 'iat': now, 'exp': now + 3600}
    values.update(overrides)
    return dict((k, v) for k, v in values.items() if v is not None)


def make_jwt(payload=None, key=KEY_A, kid=KID_A, alg='RS256', hash_method='SHA-256'):
    header = {'alg': alg, 'typ': 'JWT'}
    if kid is not None:
        header['kid'] = kid
    signing_input = (b64url(json.dumps(header).encode('utf-8')) + '.'
                     + b64url(json.dumps(claims() if payload is None else payload)
                              .encode('utf-8')))
    signature = rsa.sign(signing_input.encode('ascii'), key, hash_method)
    return signing_input + '.' + b64url(signature)


def envelope_json(data=b'Hello OIDC!'):
    return json.dumps({'message': {'data': base64.b64encode(data).decode('ascii'),
                                   'messageId': '42'},
                       'subscription': 'projects/P/subscriptions/S'})


def received(caplog):
    return [r.getMessage() for r in caplog.records if 'Received message:' in r.getMessage()]


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def certs_server():
    server = RecordingServer(body=json.dumps({KID_A: CERT_A}).encode('utf-8'),
                             headers={'Cache-Control': 'public, max-age=3600'})
    with server:
        yield server


@pytest.fixture
def app(monkeypatch, tmpdir, certs_server, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv('PUBSUB_VERIFICATION_TOKEN', TOKEN)
    monkeypatch.setattr(auth, '_APP_DIR', str(tmpdir))  # never read the real secret.yaml
    monkeypatch.setenv('PUBSUB_OIDC_AUDIENCE', AUDIENCE)
    monkeypatch.setenv('PUBSUB_OIDC_CERTS_URL',
                       'http://%s/oauth2/v1/certs' % certs_server.host)
    monkeypatch.delenv('PUBSUB_OIDC_EMAIL', raising=False)
    monkeypatch.delenv('SERVER_SOFTWARE', raising=False)  # urllib, not urlfetch
    oidc.clear_cache()
    yield webtest.TestApp(main.app)
    oidc.clear_cache()


def push(app, jwt=None, token=TOKEN, authorization=None, body=None):
    headers = {}
    if authorization is None and jwt is not None:
        authorization = 'Bearer ' + jwt
    if authorization is not None:  # WSGI (PEP 3333) header values are native strings
        headers['Authorization'] = authorization.encode('utf-8')
    url = '/pubsub/push' + ('?token=%s' % token if token is not None else '')
    return app.post(url, envelope_json() if body is None else body, headers=headers,
                    content_type='application/json', expect_errors=True)


def assert_rejected(resp, caplog, status, reason):
    assert resp.status_int == status
    assert received(caplog) == []
    logged = [w for w in warnings(caplog) if 'OIDC token check failed' in w]
    assert len(logged) == 1 and reason in logged[0], warnings(caplog)


def test_valid_token_204(app, caplog, certs_server):
    resp = push(app, make_jwt())
    assert resp.status_int == 204
    assert received(caplog)[0].startswith('Received message: Hello OIDC! (id=42')
    assert warnings(caplog) == []
    assert [r['path'] for r in certs_server.requests] == ['/oauth2/v1/certs']


def test_plain_issuer_accepted(app, caplog):
    assert push(app, make_jwt(claims(iss='accounts.google.com'))).status_int == 204


def test_certificates_cached_for_max_age(app, caplog, certs_server):
    for _ in range(3):
        assert push(app, make_jwt()).status_int == 204
    assert len(certs_server.requests) == 1
    assert len(received(caplog)) == 3


def test_certificates_refetched_after_max_age(app, caplog, certs_server):
    certs_server.headers['Cache-Control'] = 'public, max-age=0'
    assert push(app, make_jwt()).status_int == 204
    assert push(app, make_jwt()).status_int == 204
    assert len(certs_server.requests) == 2


def test_wrong_audience_403(app, caplog):
    resp = push(app, make_jwt(claims(aud='https://other.example.com/')))
    assert_rejected(resp, caplog, 403, 'wrong audience "https://other.example.com/" '
                                       '(expected "%s")' % AUDIENCE)


def test_wrong_issuer_403(app, caplog):
    resp = push(app, make_jwt(claims(iss='https://evil.example.com')))
    assert_rejected(resp, caplog, 403, 'wrong issuer')


def test_expired_403(app, caplog):
    now = int(time.time())
    resp = push(app, make_jwt(claims(iat=now - 7200, exp=now - 3600)))
    assert_rejected(resp, caplog, 403, 'expired')


def test_small_clock_skew_allowed(app, caplog):
    now = int(time.time())
    assert push(app, make_jwt(claims(iat=now - 3620, exp=now - 20))).status_int == 204
    assert push(app, make_jwt(claims(iat=now + 20, exp=now + 3620))).status_int == 204


def test_issued_in_the_future_403(app, caplog):
    now = int(time.time())
    resp = push(app, make_jwt(claims(iat=now + 600, exp=now + 4200)))
    assert_rejected(resp, caplog, 403, 'iat')


def test_no_exp_403(app, caplog):
    assert_rejected(push(app, make_jwt(claims(exp=None))), caplog, 403, 'no exp')


def test_bad_signature_403(app, caplog):
    # signed by key B but naming key A's kid
    resp = push(app, make_jwt(key=KEY_B, kid=KID_A))
    assert_rejected(resp, caplog, 403, 'bad token signature')


def test_tampered_payload_403(app, caplog):
    header, _, signature = make_jwt().split('.')
    forged = b64url(json.dumps(claims(email='attacker@example.com')).encode('utf-8'))
    resp = push(app, '.'.join([header, forged, signature]))
    assert_rejected(resp, caplog, 403, 'bad token signature')


def test_sha1_signature_is_not_rs256_403(app, caplog):
    resp = push(app, make_jwt(hash_method='SHA-1'))
    assert_rejected(resp, caplog, 403, 'bad token signature')


def test_unknown_kid_403_after_one_refetch(app, caplog, certs_server, monkeypatch):
    monkeypatch.setattr(oidc, 'MIN_REFETCH_INTERVAL', 0)
    assert push(app, make_jwt()).status_int == 204
    caplog.clear()
    resp = push(app, make_jwt(key=KEY_B, kid=KID_B))
    assert_rejected(resp, caplog, 403, 'kid "%s" is not among the certificates' % KID_B)
    assert len(certs_server.requests) == 2  # the unknown kid made it refetch once


def test_unknown_kid_refetch_is_rate_limited(app, caplog, certs_server):
    assert push(app, make_jwt()).status_int == 204
    for _ in range(3):
        assert push(app, make_jwt(key=KEY_B, kid=KID_B)).status_int == 403
    assert len(certs_server.requests) == 1  # within MIN_REFETCH_INTERVAL: no refetch


def test_key_rotation_new_kid_refetched(app, caplog, certs_server, monkeypatch):
    monkeypatch.setattr(oidc, 'MIN_REFETCH_INTERVAL', 0)
    assert push(app, make_jwt()).status_int == 204
    certs_server.body = json.dumps({KID_A: CERT_A, KID_B: CERT_B}).encode('utf-8')
    assert push(app, make_jwt(key=KEY_B, kid=KID_B)).status_int == 204
    assert len(received(caplog)) == 2


def test_token_without_kid_checked_against_all_certs(app, caplog, certs_server):
    certs_server.body = json.dumps({KID_B: CERT_B, KID_A: CERT_A}).encode('utf-8')
    assert push(app, make_jwt(kid=None)).status_int == 204


def test_missing_header_401(app, caplog):
    resp = push(app, None)
    assert_rejected(resp, caplog, 401, 'no Authorization header')
    assert resp.headers.get('WWW-Authenticate') == 'Bearer'


@pytest.mark.parametrize('authorization', ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer   '])
def test_not_a_bearer_header_401(app, caplog, authorization):
    assert_rejected(push(app, authorization=authorization), caplog, 401, 'Bearer')


@pytest.mark.parametrize('jwt,reason', [
    ('not-a-jwt', 'not a JWT'),
    ('a.b.c', 'well-formed'),
    ('a.b.c.d', 'not a JWT'),
    (u'\xe9.b.c', 'well-formed'),
], ids=['no dots', 'bad base64 json', 'four parts', 'non-ascii'])
def test_malformed_token_403(app, caplog, jwt, reason):
    assert_rejected(push(app, jwt), caplog, 403, reason)


def test_alg_none_403(app, caplog):
    header = b64url(json.dumps({'alg': 'none', 'kid': KID_A}).encode('utf-8'))
    payload = b64url(json.dumps(claims()).encode('utf-8'))
    assert_rejected(push(app, header + '.' + payload + '.'), caplog, 403, 'not RS256')


def test_hs256_403(app, caplog):
    assert_rejected(push(app, make_jwt(alg='HS256')), caplog, 403, 'not RS256')


@pytest.mark.parametrize('verified', [False, 'false', None, 1, 1.0, 'True', [True]])
def test_email_not_verified_403(app, caplog, verified):
    resp = push(app, make_jwt(claims(email_verified=verified)))
    assert_rejected(resp, caplog, 403, 'email_verified')


def test_wrong_email_403(app, caplog, monkeypatch):
    monkeypatch.setenv('PUBSUB_OIDC_EMAIL', 'other@test.iam.gserviceaccount.com')
    assert_rejected(push(app, make_jwt()), caplog, 403, 'wrong email')


def test_expected_email_204(app, caplog, monkeypatch):
    monkeypatch.setenv('PUBSUB_OIDC_EMAIL', EMAIL)
    assert push(app, make_jwt()).status_int == 204


def test_query_token_still_required(app, caplog, certs_server):
    resp = push(app, make_jwt(), token='wrong')
    assert resp.status_int == 403
    assert received(caplog) == []
    assert certs_server.requests == []  # the token check comes first


def test_certificates_unreachable_503(app, caplog, monkeypatch):
    from helpers import ClosedPort
    with ClosedPort() as closed:
        monkeypatch.setenv('PUBSUB_OIDC_CERTS_URL', 'http://%s/oauth2/v1/certs' % closed.host)
        resp = push(app, make_jwt())
    assert resp.status_int == 503
    assert resp.headers.get('Retry-After') == '10'
    assert received(caplog) == []
    assert any('certificates unavailable' in w for w in warnings(caplog))


def test_certificates_server_error_503(app, caplog, certs_server):
    certs_server.status = 500
    assert push(app, make_jwt()).status_int == 503
    assert any('HTTP 500' in w for w in warnings(caplog))


def test_known_certificates_kept_when_refetch_fails(app, caplog, certs_server):
    certs_server.headers['Cache-Control'] = 'max-age=0'
    assert push(app, make_jwt()).status_int == 204
    certs_server.status = 503
    assert push(app, make_jwt()).status_int == 204
    assert any('keeping the certificates known so far' in w for w in warnings(caplog))


def test_oidc_off_unchanged(app, caplog, certs_server, monkeypatch):
    monkeypatch.delenv('PUBSUB_OIDC_AUDIENCE')
    assert push(app, None).status_int == 204  # no Authorization header needed
    assert push(app, 'garbage').status_int == 204  # and none checked
    assert push(app, make_jwt(), token='wrong').status_int == 403
    assert len(received(caplog)) == 2
    assert certs_server.requests == []


NOT_FINITE = [float('nan'), float('inf'), float('-inf'), True, False, 10 ** 400, -10 ** 400,
              '1999999999', [1999999999], {}]
NOT_FINITE_IDS = ['NaN', 'Infinity', '-Infinity', 'true', 'false', '1e400 int', '-1e400 int',
                  'string', 'list', 'object']


@pytest.mark.parametrize('exp', NOT_FINITE, ids=NOT_FINITE_IDS)
def test_exp_not_a_finite_number_403(app, caplog, exp):
    """json writes and reads NaN and Infinity; NaN compares false with everything (never
    expires), -Infinity used to overflow int() (a 500), True is an int in Python."""
    resp = push(app, make_jwt(claims(exp=exp)))
    assert_rejected(resp, caplog, 403, 'exp')
    assert 'not a finite number' in warnings(caplog)[0]


@pytest.mark.parametrize('iat', NOT_FINITE, ids=NOT_FINITE_IDS)
def test_iat_not_a_finite_number_403(app, caplog, iat):
    resp = push(app, make_jwt(claims(iat=iat)))
    assert_rejected(resp, caplog, 403, 'iat')
    assert 'not a finite number' in warnings(caplog)[0]


def test_float_times_accepted(app, caplog):
    now = time.time()
    assert push(app, make_jwt(claims(iat=now - 0.5, exp=now + 3600.5))).status_int == 204


def test_no_iat_accepted(app, caplog):
    assert push(app, make_jwt(claims(iat=None))).status_int == 204


def _unsigned_jwt(header_json, payload_json):
    return '.'.join([b64url(header_json), b64url(payload_json), b64url(b'sig')])


@pytest.mark.parametrize('part', ['header', 'payload'])
def test_deeply_nested_token_json_403(app, caplog, part):
    """Header and payload are parsed before the signature is checked: nesting deeper than
    json's recursion allows (within MAX_TOKEN_BYTES) is an invalid token, not a 500."""
    deep = b'[' * 5000 + b']' * 5000
    plain = json.dumps({'alg': 'RS256', 'kid': KID_A}).encode('utf-8')
    jwt = _unsigned_jwt(deep, plain) if part == 'header' else _unsigned_jwt(plain, deep)
    assert len(jwt) <= oidc.MAX_TOKEN_BYTES
    assert_rejected(push(app, jwt), caplog, 403, 'nested too deeply')


@pytest.mark.parametrize('authorization,status,reason', [
    ('Bearer \xff\xfe.e30.e30', 403, 'well-formed'),
    ('Bearer a.b.\xff', 403, 'well-formed'),
    ('\xffBearer abc', 401, 'Bearer'),
    ('Bearer \x00', 403, 'not a JWT'),
], ids=['header part', 'signature part', 'scheme', 'nul'])
def test_odd_bytes_in_authorization_header(app, caplog, authorization, status, reason):
    # Python 2 WSGI hands header values over as undecoded bytes: sent as they are
    resp = app.post('/pubsub/push?token=%s' % TOKEN, envelope_json(),
                    headers={'Authorization': authorization},
                    content_type='application/json', expect_errors=True)
    assert_rejected(resp, caplog, status, reason)


def test_oversized_token_403(app, caplog):
    jwt = 'a' * (oidc.MAX_TOKEN_BYTES + 1)
    assert_rejected(push(app, jwt), caplog, 403, 'too long')


def test_token_payload_not_an_object_403(app, caplog):
    jwt = _unsigned_jwt(json.dumps({'alg': 'RS256'}).encode('utf-8'), b'null')
    assert_rejected(push(app, jwt), caplog, 403, 'not a JSON object')


# -- helpers, directly -------------------------------------------------------------------

def test_config_defaults_to_google_certs():
    assert oidc.config_from_env({}) is None
    assert oidc.config_from_env({'PUBSUB_OIDC_AUDIENCE': '  '}) is None
    config = oidc.config_from_env({'PUBSUB_OIDC_AUDIENCE': 'aud'})
    assert config.audience == 'aud'
    assert config.certs_url == 'https://www.googleapis.com/oauth2/v1/certs'
    assert config.email is None


@pytest.mark.parametrize('header,expected', [
    ('public, max-age=19008, must-revalidate, no-transform', 19008),
    ('max-age=0', 0),
    ('no-cache, max-age=60', None),
    ('public', None),
    (None, None),
])
def test_max_age(header, expected):
    assert oidc.max_age(header) == expected
