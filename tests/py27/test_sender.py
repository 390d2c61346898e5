# -*- coding: utf-8 -*-
"""pubsub-sender under Python 2.7 (webapp2 2.5.2 / webob 1.2.3 from the SDK) via WebTest,
against real loopback HTTP servers standing in for Pub/Sub (no mocks)."""
import base64
import json
import logging
import time

import pytest
import webtest

from helpers import ClosedPort, RecordingServer, load_app

main = load_app('pubsub-sender')
from pubsub_shared import MAX_MESSAGE_BYTES  # noqa: E402  (importable once lib/ is on the path)
from pubsub_shared import client as pubsub_client  # noqa: E402


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv('PUBSUB_PROJECT', 'P')
    monkeypatch.setenv('PUBSUB_TOPIC', 'T')
    monkeypatch.delenv('GOOGLE_APPLICATION_CREDENTIALS', raising=False)
    monkeypatch.delenv('PUBSUB_TIMEOUT_SECONDS', raising=False)
    return webtest.TestApp(main.app)


def _published(request):
    assert request['method'] == 'POST'
    body = json.loads(request['body'])
    assert len(body['messages']) == 1
    return body['messages'][0]


def test_health(app):
    resp = app.get('/')
    assert resp.status_int == 200
    assert 'pubsub-sender' in resp.text


def test_publish_success_exact_bytes(app, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    with RecordingServer() as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', 'Hello world!', content_type='text/plain')
    assert resp.status_int == 200
    assert resp.content_type == 'application/json'
    assert resp.json == {'messageId': '4242'}
    assert len(server.requests) == 1
    req = server.requests[0]
    assert req['path'].split('?')[0] == '/v1/projects/P/topics/T:publish'
    message = _published(req)
    assert message['data'] == base64.b64encode(b'Hello world!').decode('ascii')
    assert 'attributes' not in message
    assert 'Authorization' not in req['headers'] and 'authorization' not in req['headers']
    assert any('Publish took' in r.getMessage() and r.getMessage().endswith('seconds.')
               for r in caplog.records)


def test_publish_form_encoded_body_is_not_parsed(app, monkeypatch):
    """curl --data sends application/x-www-form-urlencoded: the bytes must go out unchanged."""
    raw = b'a=1&b=%20two&c'
    with RecordingServer() as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', raw, content_type='application/x-www-form-urlencoded')
    assert resp.status_int == 200
    assert base64.b64decode(_published(server.requests[0])['data']) == raw


def test_publish_binary_body(app, monkeypatch):
    raw = b'\x00\xff\xfe binary \r\n\x80' + u'é'.encode('utf-8')
    with RecordingServer() as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', raw, content_type='application/octet-stream')
    assert resp.status_int == 200
    assert base64.b64decode(_published(server.requests[0])['data']) == raw


def test_publish_attributes_from_query(app, monkeypatch):
    with RecordingServer() as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/?attr.color=red&attr.size=L&other=x', b'payload',
                        content_type='text/plain')
    assert resp.status_int == 200
    assert _published(server.requests[0])['attributes'] == {'color': 'red', 'size': 'L'}


def test_publish_at_size_limit(app, monkeypatch):
    raw = b'x' * MAX_MESSAGE_BYTES
    with RecordingServer() as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', raw, content_type='application/octet-stream')
    assert resp.status_int == 200
    assert len(base64.b64decode(_published(server.requests[0])['data'])) == MAX_MESSAGE_BYTES


def test_empty_body_400(app, monkeypatch):
    with RecordingServer() as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', b'', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 400
    assert server.requests == []


def test_oversize_body_413(app, monkeypatch):
    with RecordingServer() as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', b'x' * (MAX_MESSAGE_BYTES + 1),
                        content_type='application/octet-stream', expect_errors=True)
    assert resp.status_int == 413
    assert server.requests == []


def test_unreachable_503(app, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    with ClosedPort() as closed:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', closed.host)
        resp = app.post('/', b'hello', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 503
    assert 'Traceback' not in resp.text and 'Error' not in resp.text
    assert resp.headers.get('Retry-After') == '10'
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any('Pub/Sub unreachable' in m and 'projects/P/topics/T' in m for m in errors), errors


def test_timeout_503(app, monkeypatch):
    monkeypatch.setenv('PUBSUB_TIMEOUT_SECONDS', '0.5')
    with RecordingServer(hang=True) as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        start = time.time()
        resp = app.post('/', b'hello', content_type='text/plain', expect_errors=True)
        elapsed = time.time() - start
    assert resp.status_int == 503
    assert elapsed < 10


@pytest.mark.parametrize('upstream,expected', [(500, 503), (503, 503), (429, 503),
                                               (404, 502), (403, 502), (400, 502)])
def test_upstream_error(app, monkeypatch, caplog, upstream, expected):
    body = json.dumps({'error': {'code': upstream, 'message': 'Topic not found (test)',
                                 'status': 'NOT_FOUND'}}).encode('utf-8')
    with RecordingServer(status=upstream, body=body) as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', b'hello', content_type='text/plain', expect_errors=True)
    assert resp.status_int == expected
    assert 'Traceback' not in resp.text
    assert 'Topic not found' not in resp.text  # details go to the log only
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any('HTTP %d' % upstream in m and 'Topic not found (test)' in m for m in errors)


def test_garbage_upstream_response_502(app, monkeypatch):
    with RecordingServer(status=200, body=b'{"unexpected": true}') as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', b'hello', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 502


def test_no_topic_configured_500(app, monkeypatch):
    monkeypatch.delenv('PUBSUB_TOPIC')
    resp = app.post('/', b'hello', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 500


def test_no_emulator_no_credentials_500(app, monkeypatch, caplog):
    monkeypatch.delenv('PUBSUB_EMULATOR_HOST', raising=False)
    resp = app.post('/', b'hello', content_type='text/plain', expect_errors=True)
    assert resp.status_int == 500
    assert 'Traceback' not in resp.text
    assert any('GOOGLE_APPLICATION_CREDENTIALS' in r.getMessage() for r in caplog.records)


def test_real_pubsub_client_with_service_account_key(tmpdir):
    """Without PUBSUB_EMULATOR_HOST the client targets pubsub.googleapis.com with the key."""
    import rsa
    pub, priv = rsa.newkeys(512)
    key = {
        'type': 'service_account', 'project_id': 'P', 'private_key_id': 'k1',
        'private_key': priv.save_pkcs1().decode('ascii'),
        'client_email': 'sender@P.iam.gserviceaccount.com', 'client_id': '1',
        'token_uri': 'https://oauth2.googleapis.com/token',
    }
    path = tmpdir.join('key.json')
    path.write(json.dumps(key))
    client = pubsub_client.build_client(None, str(path))
    request = client.projects().topics().publish(
        topic='projects/P/topics/T', body={'messages': [{'data': 'aGk='}]})
    assert request.uri.startswith('https://pubsub.googleapis.com/v1/projects/P/topics/T:publish')
    assert hasattr(request.http, 'credentials') or hasattr(request.http.request, 'credentials')


def test_emulator_root_url():
    assert pubsub_client.emulator_root_url('127.0.0.1:8085') == 'http://127.0.0.1:8085/'
    assert pubsub_client.emulator_root_url('http://h:1/') == 'http://h:1/'


def test_over_urlfetch_limit_413_under_app_engine(app, monkeypatch):
    """Under urlfetch (dev_appserver/App Engine/AppScale) the base64 JSON request must stay
    within 10 MiB: an 8 MB body is refused with 413 before anything is sent."""
    monkeypatch.setenv('SERVER_SOFTWARE', 'Development/2.0')
    with RecordingServer() as server:
        monkeypatch.setenv('PUBSUB_EMULATOR_HOST', server.host)
        resp = app.post('/', b'x' * 8000000, content_type='application/octet-stream',
                        expect_errors=True)
    assert resp.status_int == 413
    assert 'urlfetch' in resp.text
    assert server.requests == []


def test_uses_urlfetch():
    assert pubsub_client.uses_urlfetch({'SERVER_SOFTWARE': 'Development/2.0'})
    assert pubsub_client.uses_urlfetch({'SERVER_SOFTWARE': 'Google App Engine/1.9.88'})
    assert not pubsub_client.uses_urlfetch({})
