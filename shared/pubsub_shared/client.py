"""Pub/Sub REST client construction and publishing (google-api-python-client 1.7.12).

The discovery document (pubsub.v1.json, copied next to this file by `make vendor`) is used
with build_from_document(), so no discovery request is ever made.

- PUBSUB_EMULATOR_HOST=host:port set: rootUrl points at http://host:port/, no credentials.
- otherwise: the service-account key named by GOOGLE_APPLICATION_CREDENTIALS (path relative to
  the app directory or absolute) signs every request, sent to real Cloud Pub/Sub, or to
  PUBSUB_API_ROOT=https://host:port/ when set (an emulator started with TLS and --auth: the
  key file's token_uri names that emulator's token endpoint).
- PUBSUB_CA_CERTS=ca.pem: the CA bundle httplib2 verifies the server against outside App Engine
  (the apps' unit tests, scripts). Under urlfetch (dev_appserver, App Engine, AppScale) httplib2
  ignores it: dev_appserver validates against the SDK's own CA file
  (scripts/trust-ca-dev-appserver adds a CA to it), production urlfetch does not validate.
"""

import base64
import json
import logging
import os
import re
import socket
import threading
import time

PUBSUB_SCOPE = 'https://www.googleapis.com/auth/pubsub'
# App Engine's urlfetch (which httplib2 uses under the python27 runtime, dev_appserver and
# AppScale) refuses request bodies over 10 MiB; the base64 JSON of a 10 MiB message is ~13.3 MiB,
# so under urlfetch the largest publishable payload is about 7.5 MiB.
URLFETCH_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0
_DOC_NAME = 'pubsub.v1.json'

# scheme, host (a bracketed IPv6 literal or a name), optional port and path
_API_ROOT_RE = re.compile(
    r'^(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::\d{1,5})?(/\S*)?$', re.I)
_LOOPBACK_HOSTS = ('localhost', '127.0.0.1', '[::1]')

_doc_lock = threading.Lock()
_doc_cache = {}
_local = threading.local()


class ConfigError(Exception):
    """The app is misconfigured (missing env variable, discovery document, key file)."""


class PublishError(Exception):
    """Publishing failed; `status` is the HTTP status to answer (502 or 503)."""

    def __init__(self, message, status):
        Exception.__init__(self, message)
        self.status = status


def discovery_doc_path():
    path = os.environ.get('PUBSUB_DISCOVERY_DOC')
    if path:
        return path
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _DOC_NAME)


def load_discovery_doc():
    path = discovery_doc_path()
    with _doc_lock:
        if path not in _doc_cache:
            try:
                with open(path) as f:
                    _doc_cache[path] = json.load(f)
            except (IOError, OSError, ValueError) as e:
                raise ConfigError('cannot read Pub/Sub discovery document %s: %s '
                                  '(run `make vendor`)' % (path, e))
        return dict(_doc_cache[path])


def emulator_root_url(host):
    host = host.strip().rstrip('/')
    if '://' not in host:
        host = 'http://' + host
    return host + '/'


def api_root_url(root):
    """PUBSUB_API_ROOT normalised to end with '/'; ConfigError unless it is an https:// URL
    (plain http is accepted on loopback only: the requests carry bearer tokens)."""
    root = root.strip()
    match = _API_ROOT_RE.match(root)
    if not match:
        raise ConfigError('PUBSUB_API_ROOT=%s: must be a URL like https://host:port/' % root)
    scheme, host = match.group(1).lower(), match.group(2).lower()
    if scheme == 'http' and host not in _LOOPBACK_HOSTS:
        raise ConfigError('PUBSUB_API_ROOT=%s: bearer tokens must not travel over plain http '
                          'beyond loopback: use https://' % root)
    return root.rstrip('/') + '/'


def _app_path(variable, environ):
    """The file named by env `variable` (relative to the app directory), or None if unset."""
    path = (environ.get(variable) or '').strip()
    if not path:
        return None
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    if not os.path.isfile(path):
        raise ConfigError('%s=%s: no such file' % (variable, path))
    return path


def _timeout():
    try:
        return float(os.environ.get('PUBSUB_TIMEOUT_SECONDS') or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT


def _credentials_path(environ, api_root):
    path = _app_path('GOOGLE_APPLICATION_CREDENTIALS', environ)
    if not path and api_root:
        raise ConfigError('PUBSUB_API_ROOT is set but GOOGLE_APPLICATION_CREDENTIALS is not: '
                          'name the key file the emulator made (see docs/apps.md)')
    if not path:
        raise ConfigError('neither PUBSUB_EMULATOR_HOST nor GOOGLE_APPLICATION_CREDENTIALS is '
                          'set: set one (see docs/apps.md)')
    return path


def _point_at(doc, root):
    doc['rootUrl'] = root
    doc['baseUrl'] = root + doc.get('servicePath', '')
    doc.pop('mtlsRootUrl', None)


def build_client(emulator_host=None, credentials_path=None, timeout=None, api_root=None,
                 ca_certs=None):
    """A pubsub v1 discovery client (googleapiclient Resource).

    `emulator_host`: plain HTTP, no credentials. Otherwise the key file `credentials_path`
    authorizes every request, sent to `api_root` (a normalised URL) or to Google.
    `ca_certs`: PEM bundle for httplib2 (ignored by httplib2 under urlfetch).
    """
    import httplib2
    from googleapiclient.discovery import build_from_document

    doc = load_discovery_doc()
    http = httplib2.Http(timeout=timeout or _timeout(), ca_certs=ca_certs)
    if emulator_host:
        _point_at(doc, emulator_root_url(emulator_host))
    else:
        if api_root:
            _point_at(doc, api_root)
        # The token request goes through this same Http object (oauth2client refreshes with
        # it), so the key file's token_uri is verified against the same CA bundle.
        from oauth2client.service_account import ServiceAccountCredentials
        try:
            creds = ServiceAccountCredentials.from_json_keyfile_name(
                credentials_path, scopes=[PUBSUB_SCOPE])
        except (IOError, OSError, ValueError, KeyError) as e:
            raise ConfigError('cannot load service-account key %s: %s' % (credentials_path, e))
        http = creds.authorize(http)
    return build_from_document(doc, http=http)


def client_settings(environ=None):
    """(emulator_host, credentials_path, api_root, ca_certs) from the environment."""
    environ = os.environ if environ is None else environ
    emulator_host = (environ.get('PUBSUB_EMULATOR_HOST') or '').strip() or None
    api_root = (environ.get('PUBSUB_API_ROOT') or '').strip() or None
    if emulator_host and api_root:
        raise ConfigError('PUBSUB_EMULATOR_HOST (plain http, no credentials) and '
                          'PUBSUB_API_ROOT (credentials) are both set: unset one')
    if api_root:
        api_root = api_root_url(api_root)
    creds = None if emulator_host else _credentials_path(environ, api_root)
    ca_certs = _app_path('PUBSUB_CA_CERTS', environ)
    if ca_certs and uses_urlfetch(environ):
        _note_urlfetch_ignores_ca(ca_certs)
    return emulator_host, creds, api_root, ca_certs


def _note_urlfetch_ignores_ca(ca_certs):
    # Said once per process: urlfetch has no per-request CA, so the setting cannot apply here.
    if getattr(_note_urlfetch_ignores_ca, 'said', False):
        return
    _note_urlfetch_ignores_ca.said = True
    logging.info('PUBSUB_CA_CERTS=%s is not used under urlfetch: dev_appserver validates '
                 'against its SDK CA file (scripts/trust-ca-dev-appserver), production '
                 'urlfetch does not validate certificates.', ca_certs)


def get_client():
    """A client for the current environment, cached per thread (httplib2 is not thread-safe)."""
    emulator_host, creds, api_root, ca_certs = client_settings()
    key = (emulator_host, creds, api_root, ca_certs, _timeout(), discovery_doc_path())
    cached = getattr(_local, 'client', None)
    if cached is None or cached[0] != key:
        cached = (key, build_client(emulator_host, creds, api_root=api_root, ca_certs=ca_certs))
        _local.client = cached
    return cached[1]


def topic_path(project, topic):
    return 'projects/%s/topics/%s' % (project, topic)


def _error_detail(exc):
    content = getattr(exc, 'content', b'') or b''
    try:
        if isinstance(content, bytes):
            content = content.decode('utf-8', 'replace')
        return json.loads(content)['error']['message']
    except Exception:  # noqa: BLE001 -- best effort detail for the log
        return content[:300]


def uses_urlfetch(environ=None):
    """True under App Engine / dev_appserver / AppScale, where httplib2 goes through urlfetch."""
    software = (os.environ if environ is None else environ).get('SERVER_SOFTWARE', '')
    return software.startswith(('Google App Engine/', 'Development/'))


def publish_body(data, attributes=None):
    message = {'data': base64.b64encode(data).decode('ascii')}
    if attributes:
        message['attributes'] = attributes
    return {'messages': [message]}


def publish(project, topic, data, attributes=None, client=None, max_request_bytes=None):
    """Publish `data` (bytes) to projects/P/topics/T; return the message id.

    Raises PublishError(status=502|503) when Pub/Sub errs or is unreachable, PublishError(413)
    when the encoded request exceeds `max_request_bytes` (default: the urlfetch limit when
    running under urlfetch), ConfigError when the app is misconfigured.
    """
    from googleapiclient.errors import HttpError
    from oauth2client.client import HttpAccessTokenRefreshError

    body = publish_body(data, attributes)
    topic_name = topic_path(project, topic)
    if max_request_bytes is None and uses_urlfetch():
        max_request_bytes = URLFETCH_MAX_REQUEST_BYTES
    if max_request_bytes:
        size = len(json.dumps(body))
        if size > max_request_bytes:
            raise PublishError(
                'message of %d bytes is %d bytes as a base64 JSON publish request, over the '
                '%d-byte urlfetch request limit of App Engine (publish at most about %d bytes)'
                % (len(data), size, max_request_bytes, (max_request_bytes - 200) // 4 * 3), 413)
    client = client or get_client()
    try:
        response = client.projects().topics().publish(topic=topic_name, body=body).execute()
    except HttpError as e:
        status = e.resp.status
        detail = _error_detail(e)
        http_status = 503 if status in (429, 500, 503, 504) else 502
        raise PublishError('Pub/Sub answered HTTP %s publishing to %s: %s'
                           % (status, topic_name, detail), http_status)
    except HttpAccessTokenRefreshError as e:
        # The token endpoint (the key file's token_uri) answered but refused the key.
        http_status = 503 if e.status in (None, 429, 500, 503, 504) else 502
        raise PublishError('the token endpoint refused the service-account key (HTTP %s) '
                           'publishing to %s: %s' % (e.status, topic_name, e), http_status)
    except (socket.error, socket.timeout, IOError) as e:
        raise PublishError('Pub/Sub unreachable publishing to %s: %s: %s'
                           % (topic_name, type(e).__name__, e), 503)
    except ConfigError:
        raise
    except Exception as e:  # httplib2 / urlfetch transport errors have no common base
        raise PublishError('Pub/Sub unreachable publishing to %s: %s: %s'
                           % (topic_name, type(e).__name__, e), 503)
    ids = (response or {}).get('messageIds') or []
    if len(ids) != 1:
        raise PublishError('Pub/Sub returned an unexpected publish response: %r'
                           % (response,), 502)
    return ids[0]


def timed_publish(project, topic, data, attributes=None):
    start = time.time()
    try:
        return publish(project, topic, data, attributes)
    finally:
        logging.info('Publish took %.3f seconds.', time.time() - start)
