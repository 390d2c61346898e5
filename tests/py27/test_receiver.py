# -*- coding: utf-8 -*-
"""pubsub-receiver under Python 2.7 (webapp2 2.5.2 / webob 1.2.3 from the SDK) via WebTest."""
import base64
import json
import logging

import pytest
import webtest

from helpers import load_app

main = load_app('pubsub-receiver')
from pubsub_shared import auth, envelope  # noqa: E402

TOKEN = 'test-token-0123456789abcdef'


@pytest.fixture
def app(monkeypatch, tmpdir):
    monkeypatch.setenv('PUBSUB_VERIFICATION_TOKEN', TOKEN)
    # never fall back to the developer's real pubsub-receiver/secret.yaml
    monkeypatch.setattr(auth, '_APP_DIR', str(tmpdir))
    return webtest.TestApp(main.app)


def b64(data):
    return base64.b64encode(data).decode('ascii')


def envelope_json(data=b'Hello world!', **message):
    msg = {'data': b64(data), 'messageId': '123', 'message_id': '123',
           'publishTime': '2021-02-26T19:13:55.749Z', 'publish_time': '2021-02-26T19:13:55.749Z'}
    msg.update(message)
    return json.dumps({'message': msg, 'subscription': 'projects/P/subscriptions/S'})


def received(caplog):
    return [r.getMessage() for r in caplog.records if 'Received message:' in r.getMessage()]


def push(app, body, token=TOKEN, extra='', **kw):
    url = '/pubsub/push' + ('?token=%s' % token if token is not None else '') + extra
    kw.setdefault('content_type', 'application/json')
    return app.post(url, body, expect_errors=True, **kw)


def test_health(app):
    resp = app.get('/')
    assert resp.status_int == 200
    assert 'pubsub-receiver' in resp.text


def test_wrapped_push_204_and_log_line(app, caplog):
    caplog.set_level(logging.INFO)
    resp = push(app, envelope_json(attributes={'k': 'v'}))
    assert resp.status_int == 204
    lines = received(caplog)
    assert len(lines) == 1
    assert lines[0].startswith('Received message: Hello world!')
    assert 'id=123' in lines[0] and '"k": "v"' in lines[0]


def test_utf8_payload_logged_as_text(app, caplog):
    caplog.set_level(logging.INFO)
    text = u'héllo wörld ✓'
    assert push(app, envelope_json(text.encode('utf-8'))).status_int == 204
    assert received(caplog)[0].startswith(u'Received message: ' + text)


def test_binary_payload_logged_as_base64(app, caplog):
    caplog.set_level(logging.INFO)
    data = b'\xff\xfe\x00\x80'
    assert push(app, envelope_json(data)).status_int == 204
    line = received(caplog)[0]
    assert 'not UTF-8' in line and b64(data) in line


def test_form_content_type_does_not_break_token(app, caplog):
    """A push posted as form data still works: token from the query string, body untouched."""
    caplog.set_level(logging.INFO)
    resp = push(app, envelope_json(), content_type='application/x-www-form-urlencoded')
    assert resp.status_int == 204
    assert received(caplog)[0].startswith('Received message: Hello world!')


def test_attributes_only_message(app, caplog):
    caplog.set_level(logging.INFO)
    body = json.dumps({'message': {'attributes': {'a': 'b'}, 'messageId': '9'}})
    assert push(app, body).status_int == 204
    assert received(caplog)[0].startswith('Received message:  (id=9')


def test_delivery_attempt_and_ordering_key(app, caplog):
    caplog.set_level(logging.INFO)
    body = json.loads(envelope_json(orderingKey='ok1'))
    body['deliveryAttempt'] = 5
    assert push(app, json.dumps(body)).status_int == 204
    line = received(caplog)[0]
    assert 'orderingKey=ok1' in line and 'deliveryAttempt=5' in line


@pytest.mark.parametrize('token', [None, '', 'wrong', TOKEN[:-1], TOKEN + 'x', TOKEN.upper()])
def test_bad_token_403_nothing_received(app, caplog, token):
    caplog.set_level(logging.DEBUG)
    resp = push(app, envelope_json(), token=token)
    assert resp.status_int == 403
    assert received(caplog) == []


def test_token_in_body_is_not_accepted(app, caplog):
    resp = app.post('/pubsub/push', 'token=%s' % TOKEN,
                    content_type='application/x-www-form-urlencoded', expect_errors=True)
    assert resp.status_int == 403
    assert received(caplog) == []


def test_no_token_configured_rejects_everything(app, monkeypatch, caplog):
    monkeypatch.delenv('PUBSUB_VERIFICATION_TOKEN')
    resp = push(app, envelope_json())
    assert resp.status_int == 403
    assert received(caplog) == []
    assert any(r.levelno == logging.ERROR and 'PUBSUB_VERIFICATION_TOKEN' in r.getMessage()
               for r in caplog.records)
    # an empty provided token must not match an empty configured token
    assert push(app, envelope_json(), token='').status_int == 403


def test_token_from_secret_yaml_fallback(app, monkeypatch, tmpdir, caplog):
    """Platforms that ignore `includes:` env_variables: the token is read from secret.yaml."""
    caplog.set_level(logging.INFO)
    monkeypatch.delenv('PUBSUB_VERIFICATION_TOKEN')
    tmpdir.join('secret.yaml').write(
        "env_variables:\n  PUBSUB_VERIFICATION_TOKEN: 'from-file-42'\n")
    assert push(app, envelope_json(), token='from-file-42').status_int == 204
    assert push(app, envelope_json(), token=TOKEN).status_int == 403
    assert len(received(caplog)) == 1


MALFORMED = [
    ('not json', b'this is not json'),
    ('empty body', b''),
    ('json array', b'[1, 2]'),
    ('json string', b'"message"'),
    ('no message', json.dumps({'subscription': 'projects/P/subscriptions/S'})),
    ('message not object', json.dumps({'message': 'SGVsbG8='})),
    ('empty message', json.dumps({'message': {}})),
    ('bad base64 chars', json.dumps({'message': {'data': '!!!!'}})),
    ('bad base64 length', json.dumps({'message': {'data': 'SGVsbG8'}})),
    ('bad base64 padding', json.dumps({'message': {'data': 'SG=Vs'}})),
    ('data not string', json.dumps({'message': {'data': 12}})),
    ('non-ascii data', json.dumps({'message': {'data': u'é==='}})),
    ('attributes not object', json.dumps({'message': {'data': 'SGk=', 'attributes': ['a']}})),
    ('attribute value not string', json.dumps({'message': {'data': 'SGk=',
                                                           'attributes': {'a': 1}}})),
    ('invalid utf-8 json', b'{"message": {"data": "\xff"}}'),
]


@pytest.mark.parametrize('name,body', MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_envelope_400_and_warning(app, caplog, name, body):
    caplog.set_level(logging.INFO)
    resp = push(app, body)
    assert resp.status_int == 400
    assert received(caplog) == []
    assert any(r.levelno == logging.WARNING and 'malformed' in r.getMessage()
               for r in caplog.records)


def test_malformed_with_bad_token_is_403(app, caplog):
    assert push(app, b'not json', token='wrong').status_int == 403


def test_unwrapped_push_with_metadata_headers(app, caplog):
    caplog.set_level(logging.INFO)
    resp = push(app, b'raw body {not json}', content_type='application/octet-stream',
                headers={'x-goog-pubsub-message-id': '777',
                         'x-goog-pubsub-subscription-name': 'projects/P/subscriptions/S',
                         'x-goog-pubsub-publish-time': '2021-02-26T19:13:55.749Z'})
    assert resp.status_int == 204
    line = received(caplog)[0]
    assert line.startswith('Received message: raw body {not json}')
    assert 'id=777' in line


def test_unwrapped_push_flagged_in_url(app, caplog):
    caplog.set_level(logging.INFO)
    resp = push(app, b'Hello world!', extra='&unwrapped=1', content_type='text/plain')
    assert resp.status_int == 204
    assert received(caplog)[0].startswith('Received message: Hello world!')


def test_unwrapped_push_still_needs_token(app, caplog):
    resp = push(app, b'Hello', token='nope', extra='&unwrapped=1')
    assert resp.status_int == 403
    assert received(caplog) == []


def test_get_on_push_endpoint_not_allowed(app):
    assert app.get('/pubsub/push?token=%s' % TOKEN, expect_errors=True).status_int == 405


# -- shared helpers, directly ------------------------------------------------------------

def test_token_matches_constant_time_helper():
    assert auth.token_matches(u'abc', 'abc')
    assert auth.token_matches(b'abc', u'abc')
    assert not auth.token_matches('abc', None)
    assert not auth.token_matches(None, 'abc')
    assert not auth.token_matches('', '')
    assert not auth.token_matches(u'ab\xe9', 'abc')


def test_decode_base64_urlsafe_and_standard():
    assert envelope.decode_base64(b64(b'\xfb\xff')) == b'\xfb\xff'
    assert envelope.decode_base64(base64.urlsafe_b64encode(b'\xfb\xff')) == b'\xfb\xff'
    with pytest.raises(envelope.MalformedPush):
        envelope.decode_base64('a b=')
