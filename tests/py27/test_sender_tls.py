# -*- coding: utf-8 -*-
"""pubsub-sender against an emulator with TLS and --auth (PUBSUB_API_ROOT,
GOOGLE_APPLICATION_CREDENTIALS, PUBSUB_CA_CERTS) under Python 2.7, outside urlfetch.

Stand-ins are real https servers on loopback with certificates from a throwaway CA that
make_test_keys.py makes for each run: a token endpoint answering the JWT-bearer grant as the
emulator's /token does (the key file's token_uri), and the Pub/Sub API.
"""
import atexit
import base64
import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time

import pytest
import webtest

from helpers import ROOT, RecordingServer, load_app

main = load_app('pubsub-sender')
import rsa  # noqa: E402  (vendored in pubsub-sender/lib)
from pubsub_shared import client as pubsub_client  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = tempfile.mkdtemp(prefix='sender-tls-test-')
atexit.register(shutil.rmtree, FIXTURES, True)
_env = dict(os.environ)
_env.pop('PYTHONPATH', None)  # the Python 2.7 test path must not leak into Python 3
subprocess.check_call([
    os.environ.get('PY3') or os.path.join(ROOT, '.venv', 'bin', 'python'),
    os.path.join(HERE, 'make_test_keys.py'), FIXTURES, 'tls'], env=_env)
EMAIL = 'sender@P.iam.gserviceaccount.com'
JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer'


def fixture(name):
    return os.path.join(FIXTURES, name)


SERVER_TLS = (fixture('tls-server-cert.pem'), fixture('tls-server-key.pem'))
with open(fixture('sa-public.pem'), 'rb') as _f:
    SA_PUBLIC = rsa.PublicKey.load_pkcs1(_f.read())


def b64url_decode(part):
    return base64.urlsafe_b64decode(str(part) + '=' * (-len(part) % 4))


class TokenEndpoint(RecordingServer):
    """The emulator's /token: checks the JWT-bearer grant's assertion (signed by the key file's
    key, issued by its client_email for the Pub/Sub scope) and answers tok-1, tok-2 ...;
    `assertions` holds the decoded claims of each grant. `refuse=True` answers invalid_grant."""

    def __init__(self, tls=SERVER_TLS, refuse=False):
        RecordingServer.__init__(self, respond=self._grant, tls=tls)
        self.assertions = []
        self.refuse = refuse

    def _grant(self, request):
        from six.moves.urllib.parse import parse_qs
        form = parse_qs(request['body'].decode('ascii'))
        if self.refuse or form.get('grant_type') != [JWT_BEARER]:
            return 400, b'{"error": "invalid_grant", "error_description": "test refusal"}'
        assertion = form['assertion'][0]
        header, payload, signature = assertion.split('.')
        rsa.verify((header + '.' + payload).encode('ascii'), b64url_decode(signature),
                   SA_PUBLIC)  # raises VerificationError on a bad signature
        assert json.loads(b64url_decode(header).decode('utf-8'))['alg'] == 'RS256'
        self.assertions.append(json.loads(b64url_decode(payload).decode('utf-8')))
        token = 'tok-%d' % len(self.assertions)
        return 200, json.dumps({'access_token': token, 'token_type': 'Bearer',
                                'expires_in': 3600}).encode('ascii')

    def token_uri(self, host='localhost'):
        return 'https://%s:%d/token' % (host, self.port)


def write_key_file(tmpdir, token_uri):
    with open(fixture('sa-key.pem')) as f:
        private_key = f.read()
    key = {'type': 'service_account', 'project_id': 'P', 'private_key_id': 'a' * 40,
           'private_key': private_key, 'client_email': EMAIL, 'client_id': '1' * 21,
           'token_uri': token_uri}
    path = tmpdir.join('sender-key.json')
    path.write(json.dumps(key))
    return str(path)


def api_server(statuses=(200,)):
    """The Pub/Sub API on https://localhost:<port>/: answers `statuses` in turn (the last one
    from then on)."""
    answers = list(statuses)

    def respond(request):
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        if status == 200:
            return 200, b'{"messageIds": ["4242"]}'
        return status, json.dumps({'error': {'code': status, 'message': 'test %d' % status,
                                             'status': 'UNAUTHENTICATED'}}).encode('ascii')
    return RecordingServer(respond=respond, tls=SERVER_TLS)


def bearer(request):
    headers = dict((k.lower(), v) for k, v in request['headers'].items())
    return headers.get('authorization')


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv('PUBSUB_PROJECT', 'P')
    monkeypatch.setenv('PUBSUB_TOPIC', 'T')
    for name in ('PUBSUB_EMULATOR_HOST', 'GOOGLE_APPLICATION_CREDENTIALS', 'PUBSUB_API_ROOT',
                 'PUBSUB_CA_CERTS', 'PUBSUB_TIMEOUT_SECONDS', 'SERVER_SOFTWARE'):
        monkeypatch.delenv(name, raising=False)
    return webtest.TestApp(main.app)


def configure(monkeypatch, tmpdir, token, api, ca='tls-ca.pem', host='localhost'):
    monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS',
                       write_key_file(tmpdir, token.token_uri(host)))
    monkeypatch.setenv('PUBSUB_API_ROOT', 'https://%s:%d' % (host, api.port))
    monkeypatch.setenv('PUBSUB_CA_CERTS', fixture(ca))


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_publish_over_tls_with_the_key_files_token(app, monkeypatch, tmpdir):
    with TokenEndpoint() as token, api_server() as api:
        configure(monkeypatch, tmpdir, token, api)
        before = int(time.time())
        resp = app.post('/', b'Hello TLS!', content_type='text/plain')
    assert resp.status_int == 200 and resp.json == {'messageId': '4242'}
    # One JWT-bearer grant, aimed at (aud) the key file's token_uri, asking for Pub/Sub.
    assert len(token.requests) == 1 and token.requests[0]['path'] == '/token'
    claims = token.assertions[0]
    assert claims['aud'] == token.token_uri()
    assert claims['iss'] == EMAIL
    assert claims['scope'] == pubsub_client.PUBSUB_SCOPE
    assert before - 5 <= claims['iat'] <= claims['exp'] - 3000
    # The access token it answered reaches the API call.
    assert len(api.requests) == 1
    request = api.requests[0]
    assert request['path'].split('?')[0] == '/v1/projects/P/topics/T:publish'
    assert bearer(request) == 'Bearer tok-1'
    message = json.loads(request['body'])['messages'][0]
    assert base64.b64decode(message['data']) == b'Hello TLS!'


def test_the_token_is_reused_then_refreshed_once_after_a_401(app, monkeypatch, tmpdir):
    with TokenEndpoint() as token, api_server([200, 401, 200]) as api:
        configure(monkeypatch, tmpdir, token, api)
        assert app.post('/', b'one', content_type='text/plain').status_int == 200
        # The second publish gets a 401 with tok-1: oauth2client asks for a new token once
        # and repeats the call with it.
        assert app.post('/', b'two', content_type='text/plain').status_int == 200
    assert [bearer(r) for r in api.requests] == ['Bearer tok-1', 'Bearer tok-1', 'Bearer tok-2']
    assert len(token.assertions) == 2
    assert api.requests[1]['body'] == api.requests[2]['body']


def test_a_lasting_401_gets_two_refreshes_then_502(app, monkeypatch, tmpdir, caplog):
    """oauth2client 4.1.3 refreshes at most twice per request (`max_refresh_attempts = 2` in
    oauth2client/transport.py), then hands the 401 over."""
    with TokenEndpoint() as token, api_server([401]) as api:
        configure(monkeypatch, tmpdir, token, api)
        resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 502
    assert [bearer(r) for r in api.requests] == ['Bearer tok-1', 'Bearer tok-2',
                                                 'Bearer tok-3']
    assert any('HTTP 401' in m for m in errors(caplog))


def test_a_refused_key_is_a_502_naming_the_token_endpoint(app, monkeypatch, tmpdir, caplog):
    with TokenEndpoint(refuse=True) as token, api_server() as api:
        configure(monkeypatch, tmpdir, token, api)
        resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 502
    assert api.requests == []
    assert any('token endpoint refused' in m and 'invalid_grant' in m for m in errors(caplog))


def test_a_server_certificate_from_another_ca_is_refused(app, monkeypatch, tmpdir, caplog):
    with TokenEndpoint() as token, api_server() as api:
        configure(monkeypatch, tmpdir, token, api, ca='tls-other-ca.pem')
        resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 503
    assert token.assertions == [] and api.requests == []  # no key material left the sender
    assert any('CERTIFICATE_VERIFY_FAILED' in m or 'certificate verify failed' in m.lower()
               for m in errors(caplog)), errors(caplog)


def test_without_a_ca_setting_the_default_roots_refuse_a_private_ca(app, monkeypatch, tmpdir):
    with TokenEndpoint() as token, api_server() as api:
        configure(monkeypatch, tmpdir, token, api)
        monkeypatch.delenv('PUBSUB_CA_CERTS')
        resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 503
    assert token.assertions == [] and api.requests == []


def test_httplib2_matches_dns_names_only_not_ip_addresses(app, monkeypatch, tmpdir, caplog):
    """httplib2 0.22 under Python 2.7 checks the host against the certificate's DNS names
    only: an https://127.0.0.1 URL fails even with IP:127.0.0.1 in the certificate. The
    documented way is a host name the certificate lists (docs/apps.md)."""
    ip_only = (fixture('tls-ip-only-cert.pem'), fixture('tls-ip-only-key.pem'))
    with TokenEndpoint(tls=ip_only) as token, api_server() as api:
        configure(monkeypatch, tmpdir, token, api, host='127.0.0.1')
        resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 503
    assert token.assertions == []
    # httplib2's own check, or ssl.match_hostname's before it: either names the mismatch
    assert any('does not match host 127.0.0.1' in m or "doesn't match" in m
               for m in errors(caplog)), errors(caplog)


def test_api_root_without_credentials_is_a_configuration_error(app, monkeypatch, caplog):
    monkeypatch.setenv('PUBSUB_API_ROOT', 'https://localhost:8085/')
    resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 500
    assert any('GOOGLE_APPLICATION_CREDENTIALS' in m for m in errors(caplog))


def test_api_root_and_emulator_host_together_are_refused(app, monkeypatch, caplog):
    monkeypatch.setenv('PUBSUB_API_ROOT', 'https://localhost:8085/')
    monkeypatch.setenv('PUBSUB_EMULATOR_HOST', 'localhost:8085')
    resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 500
    assert any('both set' in m for m in errors(caplog))


def test_missing_ca_file_is_a_configuration_error(app, monkeypatch, tmpdir, caplog):
    monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS',
                       write_key_file(tmpdir, 'https://localhost:1/token'))
    monkeypatch.setenv('PUBSUB_API_ROOT', 'https://localhost:8085/')
    monkeypatch.setenv('PUBSUB_CA_CERTS', str(tmpdir.join('nope.pem')))
    resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 500
    assert any('PUBSUB_CA_CERTS' in m and 'no such file' in m for m in errors(caplog))


@pytest.mark.parametrize('given,expected', [
    ('https://pubsub.internal:8085', 'https://pubsub.internal:8085/'),
    (' https://pubsub.internal:8085/ ', 'https://pubsub.internal:8085/'),
    ('https://gw.example.com/pubsub/', 'https://gw.example.com/pubsub/'),
    ('https://[::1]:8085', 'https://[::1]:8085/'),
    ('http://localhost:8085', 'http://localhost:8085/'),
    ('http://127.0.0.1:8085/', 'http://127.0.0.1:8085/'),
])
def test_api_root_url(given, expected):
    assert pubsub_client.api_root_url(given) == expected


@pytest.mark.parametrize('given', ['pubsub.internal:8085', 'ftp://h/', 'https://',
                                   'http://pubsub.internal:8085/', 'http://10.0.0.5:8085/'])
def test_api_root_url_refused(given):
    with pytest.raises(pubsub_client.ConfigError):
        pubsub_client.api_root_url(given)


def test_without_api_root_a_key_file_still_means_google(tmpdir):
    """Real Cloud Pub/Sub is unchanged: no PUBSUB_API_ROOT, a key file -> pubsub.googleapis.com
    (tokens from the key file's own token_uri, Google's)."""
    key = write_key_file(tmpdir, 'https://oauth2.googleapis.com/token')
    assert pubsub_client.client_settings({'GOOGLE_APPLICATION_CREDENTIALS': key}) == (
        None, key, None, None)
    client = pubsub_client.build_client(None, key)
    request = client.projects().topics().publish(topic='projects/P/topics/T', body={})
    assert request.uri.startswith('https://pubsub.googleapis.com/v1/projects/P/topics/T:publish')


def test_under_urlfetch_the_ca_setting_is_kept_and_explained(tmpdir, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    key = write_key_file(tmpdir, 'https://localhost:1/token')
    monkeypatch.setattr(pubsub_client._note_urlfetch_ignores_ca, 'said', False, raising=False)
    environ = {'SERVER_SOFTWARE': 'Development/2.0', 'PUBSUB_API_ROOT': 'https://localhost:9/',
               'GOOGLE_APPLICATION_CREDENTIALS': key, 'PUBSUB_CA_CERTS': fixture('tls-ca.pem')}
    settings = pubsub_client.client_settings(environ)
    assert settings == (None, key, 'https://localhost:9/', fixture('tls-ca.pem'))
    assert any('trust-ca-dev-appserver' in r.getMessage() for r in caplog.records)


def _sdk_copy(tmpdir):
    """A stand-in SDK whose urlfetch_cacerts.txt holds one CA and no final newline."""
    cacerts = tmpdir.mkdir('sdk').mkdir('lib').mkdir('cacerts').join('urlfetch_cacerts.txt')
    with open(fixture('tls-other-ca.pem')) as f:
        cacerts.write('# a CA the SDK ships\n' + f.read().rstrip('\n'))
    return cacerts


def _trust(tmpdir, *args):
    env = dict(os.environ, SDK_DIR=str(tmpdir.join('sdk')))
    proc = subprocess.Popen([os.path.join(ROOT, 'scripts', 'trust-ca-dev-appserver')]
                            + list(args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.communicate()[0]
    return proc.returncode, out.decode('utf-8')


def test_trust_ca_dev_appserver_appends_once_and_removes(tmpdir):
    cacerts = _sdk_copy(tmpdir)
    original = cacerts.read()
    with open(fixture('tls-ca.pem')) as f:
        ca_body = ''.join(line.strip() for line in f if not line.startswith('-----'))
    rc, out = _trust(tmpdir, fixture('tls-ca.pem'))
    assert rc == 0, out
    added = cacerts.read()
    assert added.startswith(original + '\n')
    assert ca_body in added.replace('\n', '')
    # The SDK's urlfetch hands the file to ssl as its CA bundle: both CAs must load from it.
    context = ssl.SSLContext(ssl.PROTOCOL_SSLv23)
    context.load_verify_locations(str(cacerts))
    assert len(context.get_ca_certs()) == 2
    rc, out = _trust(tmpdir, fixture('tls-ca.pem'))
    assert rc == 0 and 'already trusts' in out
    assert cacerts.read() == added
    rc, out = _trust(tmpdir, '--remove', fixture('tls-ca.pem'))
    assert rc == 0, out
    assert cacerts.read().rstrip('\n') == original


def test_trust_ca_dev_appserver_refuses_a_file_without_certificates(tmpdir):
    _sdk_copy(tmpdir)
    rc, out = _trust(tmpdir, fixture('sa-public.pem'))
    assert rc == 1 and 'no PEM certificate' in out


# -- against the emulator itself, started with TLS and --auth --------------------------------

EMULATOR = os.path.join(ROOT, '.venv', 'bin', 'pubsub-emulator')


def _emulator_has_tls_and_auth():
    if not os.path.isfile(EMULATOR):
        return False
    proc = subprocess.Popen([EMULATOR, 'start', '--help'], env=_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.communicate()[0].decode('utf-8', 'replace')
    return '--auth' in out and '--tls-self-signed' in out


def _free_port():
    import socket
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _healthy(url, ca):
    import urllib2
    if not os.path.isfile(ca):
        return False
    try:
        context = ssl.create_default_context(cafile=ca)
        return urllib2.urlopen(url, timeout=1, context=context).getcode() == 200
    except Exception:  # noqa: BLE001 -- not up yet
        return False


@pytest.fixture
def tls_emulator(tmpdir):
    """The project's emulator on https://localhost:<port>/ with --auth and its self-signed CA;
    topic tls-project/tls-topic exists, keys/sender.json is a key it made for the sender."""
    data = tmpdir.mkdir('emulator')
    topology = tmpdir.join('topology.yaml')
    topology.write('projects:\n  tls-project:\n    topics:\n      tls-topic: {}\n')
    port = _free_port()
    url = 'https://localhost:%d' % port
    key = str(tmpdir.join('sender.json'))
    # The sender only publishes: roles/pubsub.publisher (under --auth a key without a role may
    # do nothing).
    subprocess.check_call([EMULATOR, 'keys', 'create', 'sender@tls-project.iam.gserviceaccount.com',
                           '--out', key, '--data-dir', str(data), '--url', url,
                           '--role', 'roles/pubsub.publisher'], env=_env)
    log = open(str(tmpdir.join('emulator.log')), 'wb')
    proc = subprocess.Popen([EMULATOR, 'start', '--host', '127.0.0.1', '--port', str(port),
                             '--data-dir', str(data), '--auth', '--tls-self-signed',
                             '--config', str(topology)], env=_env, stdout=log,
                            stderr=subprocess.STDOUT)
    ca = str(data.join('tls', 'ca.pem'))
    try:
        deadline = time.time() + 30
        while not _healthy(url + '/healthz', ca):
            assert proc.poll() is None and time.time() < deadline, \
                tmpdir.join('emulator.log').read()
            time.sleep(0.1)
        yield {'url': url + '/', 'key': key, 'ca': ca}
    finally:
        proc.terminate()
        proc.wait()
        log.close()


@pytest.mark.skipif(not _emulator_has_tls_and_auth(),
                    reason='pending: pubsub-emulator start has no --auth/--tls-self-signed')
def test_publish_to_the_emulator_with_tls_and_auth(app, monkeypatch, tls_emulator, tmpdir,
                                                   caplog):
    monkeypatch.setenv('PUBSUB_PROJECT', 'tls-project')
    monkeypatch.setenv('PUBSUB_TOPIC', 'tls-topic')
    monkeypatch.setenv('PUBSUB_API_ROOT', tls_emulator['url'])
    monkeypatch.setenv('PUBSUB_CA_CERTS', tls_emulator['ca'])
    monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS', tls_emulator['key'])
    resp = app.post('/', b'Hello emulator over TLS', content_type='text/plain')
    assert resp.status_int == 200 and resp.json['messageId']
    # A key the emulator never made: its token endpoint refuses it.
    monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS', write_key_file(
        tmpdir, tls_emulator['url'] + 'token'))
    resp = app.post('/', b'x', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 502
    assert any('token endpoint refused' in m for m in errors(caplog)), errors(caplog)
