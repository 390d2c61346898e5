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


# -- hostile input: never a 500 ----------------------------------------------------------
# Each refusal answers one plain-text line naming the reason and logs exactly one warning,
# never a traceback; nothing is received.

def assert_refused(resp, caplog, status, text, log=None):
    assert resp.status_int == status, resp.text
    assert resp.content_type == 'text/plain'
    assert text in resp.text and resp.text.count('\n') == 1, resp.text
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in logged] == [logging.WARNING], [r.getMessage() for r in logged]
    assert (log or text) in logged[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert received(caplog) == []


def assert_no_traceback(caplog):
    assert not any(r.exc_info or r.levelno >= logging.ERROR for r in caplog.records)


@pytest.mark.parametrize('query', [
    '?token=%ff%fe',                          # the token itself is not UTF-8
    '?token=%s&x=%%ff' % TOKEN,               # a right token, another parameter not UTF-8
    '?token=%s&%%ff=1' % TOKEN,               # a parameter name not UTF-8
    '?token=%s&x=\xff' % TOKEN,               # a raw byte, not percent-encoded
    '?token=%C0%AF',                          # overlong UTF-8 for '/'
], ids=['token', 'other value', 'name', 'raw byte', 'overlong'])
def test_query_not_utf8_400(app, caplog, query):
    caplog.set_level(logging.INFO)
    resp = app.post('/pubsub/push' + query, envelope_json(), content_type='application/json',
                    expect_errors=True)
    assert_refused(resp, caplog, 400, 'query string is not valid UTF-8')


@pytest.mark.parametrize('token', [
    '%C3%A9' + TOKEN,   # valid UTF-8, not ASCII: compared as bytes, in constant time
    '%ED%A0%80',        # an encoded lone surrogate, which Python 2's UTF-8 codec accepts
    '%00' + TOKEN,      # a NUL
], ids=['e-acute', 'surrogate', 'nul'])
def test_decodable_odd_token_is_just_wrong_403(app, caplog, token):
    caplog.set_level(logging.INFO)
    resp = push(app, envelope_json(), token=token)
    assert_refused(resp, caplog, 403, 'Forbidden: missing or wrong token.',
                   'missing or wrong verification token')


@pytest.mark.parametrize('query', [
    '?token={0}&token={0}',
    '?token=wrong&token={0}',
    '?token={0}&token=wrong',
    '?token=&token={0}',
    '?token={0};token={0}',                   # webob splits on ';' as well as '&'
    '?token={0}&unwrapped=1&token={0}',
], ids=['same twice', 'right last', 'right first', 'empty first', 'semicolon', 'apart'])
def test_repeated_token_403(app, caplog, query):
    caplog.set_level(logging.INFO)
    resp = app.post('/pubsub/push' + query.format(TOKEN), envelope_json(),
                    content_type='application/json', expect_errors=True)
    assert_refused(resp, caplog, 403, 'Forbidden: more than one token.',
                   'the token parameter is given 2 times')


@pytest.mark.parametrize('method,path', [
    ('post', '/pubsub/push%ff%fe'),
    ('post', '/pubsub/push/\xff'),
    ('post', '/%C0%AFpubsub/push'),
    ('get', '/%ff'),
])
def test_path_not_utf8_400(app, caplog, method, path):
    caplog.set_level(logging.INFO)
    resp = getattr(app, method)(path + '?token=%s' % TOKEN, expect_errors=True)
    assert_refused(resp, caplog, 400, 'URL path is not valid UTF-8')


def test_unknown_utf8_path_404(app, caplog):
    caplog.set_level(logging.INFO)
    resp = app.post('/pubsub/push%C3%A9?token=' + TOKEN, envelope_json(), expect_errors=True)
    assert resp.status_int == 404
    assert_no_traceback(caplog)
    assert received(caplog) == []


@pytest.mark.parametrize('header', [
    'x-goog-pubsub-message-id', 'x-goog-pubsub-subscription-name',
    'x-goog-pubsub-publish-time', 'x-goog-pubsub-ordering-key'])
def test_unwrapped_metadata_header_not_utf8_400(app, caplog, header):
    caplog.set_level(logging.INFO)
    headers = {'x-goog-pubsub-message-id': '777'}
    headers[header] = 'x\xff\xfe'  # Python 2 WSGI: header values are undecoded bytes
    resp = push(app, b'raw body', content_type='application/octet-stream', headers=headers)
    assert_refused(resp, caplog, 400, 'header %s is not valid UTF-8' % header)


def test_unwrapped_metadata_header_utf8_logged(app, caplog):
    caplog.set_level(logging.INFO)
    key = u'clé ✓'
    resp = push(app, b'raw body', content_type='application/octet-stream',
                headers={'x-goog-pubsub-message-id': '778',
                         'x-goog-pubsub-ordering-key': key.encode('utf-8')})
    assert resp.status_int == 204
    assert u'orderingKey=' + key in received(caplog)[0]
    assert_no_traceback(caplog)


@pytest.mark.parametrize('headers', [
    {'User-Agent': '\xff\xfe'},
    {'X-Odd': '\x00\x01\xff'},
    {'Authorization': 'Bearer \xff\xfe'},  # OIDC off: not looked at
    {'Content-Type': 'application/json; charset=\xff'},
    {'Content-Type': 'application/json; charset=latin-1'},
], ids=['user-agent', 'control bytes', 'authorization', 'charset bytes', 'charset latin-1'])
def test_odd_bytes_in_other_headers_ignored_204(app, caplog, headers):
    caplog.set_level(logging.INFO)
    headers = dict(headers)
    content_type = headers.pop('Content-Type', 'application/json')
    resp = push(app, envelope_json(), headers=headers, content_type=content_type)
    assert resp.status_int == 204
    assert received(caplog)[0].startswith('Received message: Hello world!')
    assert_no_traceback(caplog)


DEEP = 100000

HOSTILE_BODIES = [
    ('utf-16 json', envelope_json().encode('utf-16'), 'body is not UTF-8 JSON'),
    ('latin-1 json', json.dumps({'message': {'data': 'SGk=', 'messageId': u'é'}},
                                ensure_ascii=False).encode('latin-1'), 'not UTF-8 JSON'),
    ('nul bytes', b'\x00' * 64, 'body is not JSON'),
    ('nested arrays', b'[' * DEEP + b']' * DEEP, 'nested too deeply'),
    ('nested objects', b'{"a":' * DEEP + b'1' + b'}' * DEEP, 'nested too deeply'),
    ('nested in message', b'{"message": {"data": "SGk=", "attributes": ' + b'[' * DEEP
     + b']' * DEEP + b'}}', 'nested too deeply'),
    ('unclosed nesting', b'[' * DEEP, 'JSON'),
    ('null', b'null', 'envelope is not a JSON object'),
    ('empty array', b'[]', 'envelope is not a JSON object'),
    ('number', b'123', 'envelope is not a JSON object'),
    ('huge number', b'1e999', 'envelope is not a JSON object'),
    ('NaN', b'NaN', 'envelope is not a JSON object'),
    ('true', b'true', 'envelope is not a JSON object'),
    ('empty object', b'{}', 'envelope has no "message" object'),
    ('message null', b'{"message": null}', 'envelope has no "message" object'),
    ('attempt NaN', b'{"message": {"data": "SGk="}, "deliveryAttempt": NaN}',
     'deliveryAttempt must be an integer'),
    ('attempt true', b'{"message": {"data": "SGk="}, "deliveryAttempt": true}',
     'deliveryAttempt must be an integer'),
    ('messageId number', b'{"message": {"data": "SGk=", "messageId": 5}}',
     'message.messageId must be a string'),
    ('whitespace', b'   \n\t ', 'body is not JSON'),
]


@pytest.mark.parametrize('name,body,reason', HOSTILE_BODIES, ids=[b[0] for b in HOSTILE_BODIES])
def test_hostile_body_400(app, caplog, name, body, reason):
    caplog.set_level(logging.INFO)
    assert_refused(push(app, body), caplog, 400, reason)


@pytest.mark.parametrize('body', [
    # lone surrogates, escaped: valid JSON, odd text; logged, not a crash
    b'{"message": {"data": "SGk=", "messageId": "\\ud800", "attributes": {"k": "\\udfff"}}}',
    # data of a UTF-8-encoded surrogate (Python 2's codec reads it as text)
    json.dumps({'message': {'data': b64(b'\xed\xa0\x80')}}),
    # nesting Python's json handles, where nothing reads it
    b'{"message": {"data": "SGk="}, "extra": ' + b'[' * 500 + b']' * 500 + b'}',
    # an enormous integer where nothing reads it
    b'{"message": {"data": "SGk="}, "extra": 1' + b'0' * 5000 + b'}',
], ids=['surrogate escapes', 'surrogate bytes', 'moderate nesting', 'huge integer'])
def test_odd_but_valid_body_204(app, caplog, body):
    caplog.set_level(logging.INFO)
    assert push(app, body).status_int == 204
    assert len(received(caplog)) == 1
    assert_no_traceback(caplog)


def test_body_over_limit_413_before_reading(app, caplog):
    caplog.set_level(logging.INFO)
    body = b' ' * (envelope.MAX_PUSH_BODY_BYTES + 1)
    resp = push(app, body)
    assert_refused(resp, caplog, 413, 'over %d bytes' % envelope.MAX_PUSH_BODY_BYTES,
                   'over the %d-byte limit' % envelope.MAX_PUSH_BODY_BYTES)


def test_body_over_limit_with_wrong_token_403(app, caplog):
    """The token is checked first: an unauthenticated client cannot make it read a body."""
    caplog.set_level(logging.INFO)
    resp = push(app, b' ' * (envelope.MAX_PUSH_BODY_BYTES + 1), token='wrong')
    assert resp.status_int == 403


def test_largest_real_push_fits_the_limit(app, caplog):
    """A 10 MiB message (Pub/Sub's limit), base64 in its envelope, is under the limit."""
    caplog.set_level(logging.INFO)
    data = b'\x00\xff' * (5 * 1024 * 1024)
    attributes = dict(('k%02d' % i, u'\x01' * 1024) for i in range(100))  # escaped 6x
    body = envelope_json(data, attributes=attributes)
    assert len(body) <= envelope.MAX_PUSH_BODY_BYTES
    assert push(app, body).status_int == 204
    assert 'not UTF-8' in received(caplog)[0]
