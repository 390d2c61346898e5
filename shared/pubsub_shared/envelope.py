"""Parsing Pub/Sub push requests: wrapped JSON envelopes and unwrapped (noWrapper) pushes."""

import base64
import binascii
import json
import re

try:  # Python 2
    text_type = unicode  # noqa: F821
except NameError:  # Python 3
    text_type = str

_B64_RE = re.compile(r'^[A-Za-z0-9+/_-]*={0,2}$')
METADATA_HEADER_PREFIX = 'x-goog-pubsub-'
# The largest push body accepted (413 above it). A Pub/Sub message is at most 10 MB (data and
# attributes together); wrapped, its data is base64 (4/3: ~13.4 MiB for 10 MiB) inside a JSON
# envelope whose attributes may grow up to 6x by JSON escaping (100 attributes of at most
# 256 + 1024 bytes: under 1 MiB), so 16 MiB holds any real push. App Engine itself refuses
# requests over 32 MB, but AppScale's front end is not known to cap them, and a body is read
# into memory whole: this bounds what one request can make an instance hold.
MAX_PUSH_BODY_BYTES = 16 * 1024 * 1024


class MalformedPush(ValueError):
    """The push request is not a valid Pub/Sub push; answer 400."""


class PushMessage(object):
    def __init__(self, data, attributes=None, message_id=None, publish_time=None,
                 subscription=None, ordering_key=None, delivery_attempt=None, wrapped=True):
        self.data = data
        self.attributes = attributes or {}
        self.message_id = message_id
        self.publish_time = publish_time
        self.subscription = subscription
        self.ordering_key = ordering_key
        self.delivery_attempt = delivery_attempt
        self.wrapped = wrapped

    def payload_text(self):
        return payload_text(self.data)

    def log_line(self):
        """`Received message: <payload> (id=..., attributes={...})`."""
        details = ['id=%s' % (self.message_id or '-')]
        if self.attributes:
            details.append('attributes=%s' % json.dumps(self.attributes, sort_keys=True))
        if self.ordering_key:
            details.append('orderingKey=%s' % self.ordering_key)
        if self.delivery_attempt is not None:
            details.append('deliveryAttempt=%s' % self.delivery_attempt)
        return u'Received message: %s (%s)' % (self.payload_text(), u', '.join(details))


def decode_base64(value):
    """Strictly decode standard (or URL-safe) base64; raise MalformedPush otherwise."""
    if isinstance(value, text_type):
        try:
            value = value.encode('ascii')
        except UnicodeError:
            raise MalformedPush('message.data is not base64 (non-ASCII characters)')
    if not isinstance(value, bytes):
        raise MalformedPush('message.data must be a base64 string')
    text = value.decode('ascii')
    if len(text) % 4 or not _B64_RE.match(text):
        raise MalformedPush('message.data is not valid base64')
    try:
        return base64.b64decode(text.replace('-', '+').replace('_', '/'))
    except (TypeError, ValueError, binascii.Error):
        raise MalformedPush('message.data is not valid base64')


def payload_text(data):
    """The payload as text when it is UTF-8, else a clear repr of the bytes."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        return u'<%d bytes, not UTF-8, base64: %s>' % (
            len(data), base64.b64encode(data).decode('ascii'))


def _optional_str(message, *keys):
    for key in keys:
        value = message.get(key)
        if value is None:
            continue
        if not isinstance(value, (text_type, str)):
            raise MalformedPush('message.%s must be a string' % key)
        return value
    return None


def parse_envelope(body):
    """Parse a wrapped push body (JSON) into a PushMessage; raise MalformedPush."""
    if not body:
        raise MalformedPush('empty body')
    try:
        if isinstance(body, bytes):
            body = body.decode('utf-8')
    except UnicodeError:
        raise MalformedPush('body is not UTF-8 JSON')
    try:
        envelope = json.loads(body)
    except ValueError:
        raise MalformedPush('body is not JSON')
    except RuntimeError:
        # json recurses once per nesting level: thousands of [ or { exhaust the stack
        # (RuntimeError under Python 2, its subclass RecursionError under Python 3).
        raise MalformedPush('body is JSON nested too deeply')
    if not isinstance(envelope, dict):
        raise MalformedPush('envelope is not a JSON object')
    message = envelope.get('message')
    if not isinstance(message, dict):
        raise MalformedPush('envelope has no "message" object')
    data = message.get('data')
    data = b'' if data is None else decode_base64(data)
    attributes = message.get('attributes') or {}
    if not isinstance(attributes, dict) or not all(
            isinstance(v, (text_type, str)) for v in attributes.values()):
        raise MalformedPush('message.attributes must be an object of strings')
    if not data and not attributes:
        raise MalformedPush('message has neither data nor attributes')
    subscription = envelope.get('subscription')
    if subscription is not None and not isinstance(subscription, (text_type, str)):
        raise MalformedPush('subscription must be a string')
    attempt = envelope.get('deliveryAttempt')
    if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int)):
        raise MalformedPush('deliveryAttempt must be an integer')
    return PushMessage(
        data=data,
        attributes=attributes,
        message_id=_optional_str(message, 'messageId', 'message_id'),
        publish_time=_optional_str(message, 'publishTime', 'publish_time'),
        subscription=subscription,
        ordering_key=_optional_str(message, 'orderingKey', 'ordering_key'),
        delivery_attempt=attempt,
        wrapped=True)


def metadata_headers(headers):
    """{lowercased name: value} of the x-goog-pubsub-* headers in `headers`."""
    return dict((k.lower(), v) for k, v in headers.items()
                if k.lower().startswith(METADATA_HEADER_PREFIX))


def _header_text(name, value):
    """A metadata header's value as text. WSGI under Python 2 hands header values over as
    bytes, undecoded: one that is not UTF-8 would break the log line later, so it is refused
    here (MalformedPush) instead."""
    if isinstance(value, bytes):
        try:
            return value.decode('utf-8')
        except UnicodeError:
            raise MalformedPush('header %s is not valid UTF-8' % name)
    return value


def parse_unwrapped(body, headers):
    """An unwrapped (noWrapper) push: the body is the data, metadata in x-goog-pubsub-*."""
    meta = dict((k, _header_text(k, v)) for k, v in metadata_headers(headers).items())
    return PushMessage(
        data=body or b'',
        message_id=meta.get('x-goog-pubsub-message-id'),
        publish_time=meta.get('x-goog-pubsub-publish-time'),
        subscription=meta.get('x-goog-pubsub-subscription-name'),
        ordering_key=meta.get('x-goog-pubsub-ordering-key'),
        wrapped=False)


def is_unwrapped(headers, query):
    """Unwrapped when the push carries x-goog-pubsub-* metadata headers (writeMetadata) or the
    endpoint URL says so (`unwrapped=1`, for noWrapper without writeMetadata)."""
    flag = (query.get('unwrapped') or '').lower()
    if flag in ('1', 'true', 'yes'):
        return True
    return bool(metadata_headers(headers))


def parse_push(body, headers, query):
    """Parse any push request; raise MalformedPush."""
    if is_unwrapped(headers, query):
        return parse_unwrapped(body, headers)
    return parse_envelope(body)
