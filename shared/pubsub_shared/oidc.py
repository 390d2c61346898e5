"""Optional OIDC verification of Pub/Sub push requests (`pushConfig.oidcToken`).

With `PUBSUB_OIDC_AUDIENCE` set, every push must carry `Authorization: Bearer <JWT>`, an ID
token as Google (or the project's emulator) signs it for push subscriptions, checked the way
Google documents for push receivers:

- RS256 signature by a key of `PUBSUB_OIDC_CERTS_URL` (default Google's
  https://www.googleapis.com/oauth2/v1/certs: `{kid: x509 PEM certificate}`), chosen by the
  token's `kid`; the certificates are cached in memory for their `Cache-Control: max-age`
  (else DEFAULT_CERTS_TTL) and refetched when a token names an unknown `kid`;
- `aud` equals `PUBSUB_OIDC_AUDIENCE`; `iss` is accounts.google.com (with or without https://);
- `exp` not passed and `iat` not in the future (CLOCK_SKEW_SECONDS of slack either way), both
  finite numbers (not NaN, Infinity or a boolean);
- `email_verified` true and, when `PUBSUB_OIDC_EMAIL` is set, `email` equals it.

Pure Python, Python 2.7 and 3: oauth2client.crypt.RsaVerifier (rsa + pyasn1) reads the
certificates; they are fetched with App Engine's urlfetch under App Engine / dev_appserver /
AppScale, with urllib elsewhere (unit tests).
"""

import base64
import binascii
import json
import logging
import math
import os
import re
import threading
import time

AUDIENCE_ENV = 'PUBSUB_OIDC_AUDIENCE'
CERTS_URL_ENV = 'PUBSUB_OIDC_CERTS_URL'
EMAIL_ENV = 'PUBSUB_OIDC_EMAIL'
GOOGLE_CERTS_URL = 'https://www.googleapis.com/oauth2/v1/certs'
ISSUERS = ('accounts.google.com', 'https://accounts.google.com')
CLOCK_SKEW_SECONDS = 60
DEFAULT_CERTS_TTL = 3600       # when the certificate response has no usable max-age
MAX_CERTS_TTL = 24 * 3600
MIN_REFETCH_INTERVAL = 30      # unknown kid: refetch at most this often (per URL)
FETCH_TIMEOUT = 10
MAX_TOKEN_BYTES = 16 * 1024

_MAX_AGE_RE = re.compile(r'(?:^|[,\s])max-age\s*=\s*"?(\d+)"?', re.I)

try:  # Python 2
    text_type = unicode  # noqa: F821
except NameError:  # Python 3
    text_type = str


class InvalidToken(Exception):
    """The push is not authenticated (answer 401 when `missing`, else 403); str() = reason."""

    def __init__(self, reason, missing=False):
        Exception.__init__(self, reason)
        self.missing = missing


class CertsUnavailable(Exception):
    """The signing certificates could not be fetched (answer 503: Pub/Sub retries)."""


class Config(object):
    def __init__(self, audience, certs_url=GOOGLE_CERTS_URL, email=None):
        self.audience = audience
        self.certs_url = certs_url or GOOGLE_CERTS_URL
        self.email = email or None


def config_from_env(environ=None):
    """The OIDC settings, or None when PUBSUB_OIDC_AUDIENCE is unset (verification off)."""
    environ = os.environ if environ is None else environ
    audience = (environ.get(AUDIENCE_ENV) or '').strip()
    if not audience:
        return None
    return Config(audience,
                  (environ.get(CERTS_URL_ENV) or '').strip() or GOOGLE_CERTS_URL,
                  (environ.get(EMAIL_ENV) or '').strip() or None)


# -- fetching and caching the certificates -----------------------------------------------

def _uses_urlfetch():
    software = os.environ.get('SERVER_SOFTWARE', '')
    return software.startswith(('Google App Engine/', 'Development/'))


def http_get(url, timeout=FETCH_TIMEOUT):
    """GET `url`; return (status, headers with lowercase names, body bytes)."""
    if _uses_urlfetch():
        from google.appengine.api import urlfetch
        result = urlfetch.fetch(url, deadline=timeout, validate_certificate=True,
                                follow_redirects=False)
        headers = dict((k.lower(), v) for k, v in result.headers.items())
        return result.status_code, headers, result.content
    try:  # Python 2
        from urllib2 import HTTPError, urlopen
    except ImportError:  # Python 3
        from urllib.error import HTTPError
        from urllib.request import urlopen
    try:
        response = urlopen(url, timeout=timeout)
    except HTTPError as e:
        return e.code, {}, e.read()
    try:
        headers = dict((k.lower(), v) for k, v in response.info().items())
        return response.getcode(), headers, response.read()
    finally:
        response.close()


def max_age(cache_control):
    """Seconds from a Cache-Control header's max-age, or None."""
    match = _MAX_AGE_RE.search(cache_control or '')
    if not match or 'no-cache' in cache_control.lower() or 'no-store' in cache_control.lower():
        return None
    return int(match.group(1))


class CertCache(object):
    """{kid: verifier} per certificates URL, kept for the response's max-age."""

    def __init__(self, fetch=None):
        self._fetch = fetch
        self._lock = threading.Lock()
        self._entries = {}  # url -> (verifiers, expires_at, last fetch attempt)

    def clear(self):
        with self._lock:
            self._entries.clear()

    def _load(self, url):
        fetch = self._fetch or http_get
        try:
            status, headers, body = fetch(url)
        except Exception as e:  # urlfetch / urllib errors have no common base
            raise CertsUnavailable('cannot fetch %s: %s: %s' % (url, type(e).__name__, e))
        if status != 200:
            raise CertsUnavailable('cannot fetch %s: HTTP %s' % (url, status))
        try:
            if isinstance(body, bytes):
                body = body.decode('utf-8')
            certs = json.loads(body)
        except (ValueError, UnicodeError):
            raise CertsUnavailable('%s did not answer JSON' % url)
        if not isinstance(certs, dict) or not certs:
            raise CertsUnavailable('%s did not answer {kid: x509 PEM certificate}' % url)
        from oauth2client.crypt import RsaVerifier
        verifiers = {}
        for kid, pem in certs.items():
            try:
                verifiers[kid] = RsaVerifier.from_string(pem, True)
            except Exception as e:  # pyasn1 / rsa parse errors
                logging.warning('OIDC: ignoring unreadable certificate %s from %s: %s',
                                kid, url, e)
        if not verifiers:
            raise CertsUnavailable('%s holds no readable x509 certificate' % url)
        ttl = max_age(headers.get('cache-control'))
        ttl = DEFAULT_CERTS_TTL if ttl is None else min(ttl, MAX_CERTS_TTL)
        now = time.time()
        return verifiers, now + ttl, now

    def get(self, url, kid=None):
        """The verifiers of `url`: cached until they expire, refetched (at most every
        MIN_REFETCH_INTERVAL seconds) when `kid` is not among them."""
        with self._lock:
            entry = self._entries.get(url)
            now = time.time()
            stale = entry is None or now >= entry[1]
            unknown = (entry is not None and kid is not None and kid not in entry[0]
                       and now - entry[2] >= MIN_REFETCH_INTERVAL)
            if stale or unknown:
                try:
                    entry = self._load(url)
                except CertsUnavailable as e:
                    if entry is None:
                        raise
                    # keep the known keys while refetching fails; retry in a while
                    logging.warning('OIDC: %s; keeping the certificates known so far.', e)
                    expires = now + MIN_REFETCH_INTERVAL if stale else entry[1]
                    self._entries[url] = (entry[0], expires, now)
                    return entry[0]
                self._entries[url] = entry
            return entry[0]


_certs = CertCache()


def clear_cache():
    _certs.clear()


# -- the token ---------------------------------------------------------------------------

def _b64url_decode(segment):
    if isinstance(segment, text_type):
        segment = segment.encode('ascii')
    if not re.match(br'^[A-Za-z0-9_-]*\Z', segment):
        raise ValueError('not base64url')
    return base64.urlsafe_b64decode(segment + b'=' * (-len(segment) % 4))


def bearer_token(authorization):
    """The token of an `Authorization: Bearer <token>` header; raise InvalidToken."""
    if not authorization:
        raise InvalidToken('no Authorization header', missing=True)
    parts = authorization.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != 'bearer' or not parts[1].strip():
        raise InvalidToken('Authorization header is not "Bearer <token>"', missing=True)
    return parts[1].strip()


def _show(value):
    """A claim for a log line: JSON (quoted, escaped, the same under Python 2 and 3)."""
    try:
        return json.dumps(value)[:200]
    except (TypeError, ValueError):
        return '<unprintable>'


try:  # Python 2: JSON integers beyond the machine word are longs
    _NUMBER_TYPES = (int, long, float)  # noqa: F821
except NameError:  # Python 3
    _NUMBER_TYPES = (int, float)


def _finite_time(value):
    """`value` (an exp or iat claim) as a float, or None unless it is a finite JSON number.

    Python's json reads NaN and Infinity: NaN compares false with everything and Infinity is
    never passed, so either would slip past the time checks (and -Infinity made int() raise);
    True is an int in Python; an integer too large for a float would make the arithmetic raise.
    """
    if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    if math.isnan(value) or math.isinf(value):
        return None
    return value


def verify_token(token, config, now=None, certs=None):
    """Verify an ID token; return its claims or raise InvalidToken / CertsUnavailable."""
    certs = certs or _certs
    if isinstance(token, text_type):
        try:
            token = token.encode('ascii')
        except UnicodeError:
            raise InvalidToken('token is not ASCII')
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken('token is too long')
    if token.count(b'.') != 2:
        raise InvalidToken('token is not a JWT (header.payload.signature)')
    header_b64, payload_b64, signature_b64 = token.split(b'.')
    try:
        header = json.loads(_b64url_decode(header_b64).decode('utf-8'))
        payload = json.loads(_b64url_decode(payload_b64).decode('utf-8'))
        signature = _b64url_decode(signature_b64)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise InvalidToken('token is not a well-formed JWT')
    except RuntimeError:
        # Read before the signature is checked, so anyone can send it: deeply nested JSON
        # exhausts json's recursion (RecursionError, a RuntimeError, under Python 3).
        raise InvalidToken('token is not a well-formed JWT (JSON nested too deeply)')
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InvalidToken('token header or payload is not a JSON object')
    if header.get('alg') != 'RS256':
        raise InvalidToken('token algorithm %s is not RS256' % _show(header.get('alg')))
    kid = header.get('kid')
    if kid is not None and not isinstance(kid, (text_type, str)):
        raise InvalidToken('token kid is not a string')

    verifiers = certs.get(config.certs_url, kid)
    if kid is not None:
        if kid not in verifiers:
            raise InvalidToken('token kid %s is not among the certificates of %s'
                               % (_show(kid), config.certs_url))
        candidates = [verifiers[kid]]
    else:  # no kid: any of the certificates (as google-auth does)
        candidates = list(verifiers.values())
    signed = header_b64 + b'.' + payload_b64
    # RsaVerifier returns the hash name from the signature; RS256 means SHA-256 only.
    if not any(v.verify(signed, signature) == 'SHA-256' for v in candidates):
        raise InvalidToken('bad token signature')

    now = time.time() if now is None else now
    iss = payload.get('iss')
    if iss not in ISSUERS:
        raise InvalidToken('wrong issuer %s' % _show(iss))
    aud = payload.get('aud')
    if aud != config.audience:
        raise InvalidToken('wrong audience %s (expected %s)' % (_show(aud), _show(config.audience)))
    if payload.get('exp') is None:
        raise InvalidToken('token has no exp')
    exp = _finite_time(payload.get('exp'))
    if exp is None:
        raise InvalidToken('token exp %s is not a finite number' % _show(payload.get('exp')))
    if now > exp + CLOCK_SKEW_SECONDS:
        raise InvalidToken('token expired %d seconds ago' % int(now - exp))
    if payload.get('iat') is not None:
        iat = _finite_time(payload.get('iat'))
        if iat is None:
            raise InvalidToken('token iat %s is not a finite number'
                               % _show(payload.get('iat')))
        if iat > now + CLOCK_SKEW_SECONDS:
            raise InvalidToken('token iat is in the future')
    # `in (True, 'true')` would also let 1 and 1.0 through (1 == True in Python)
    verified = payload.get('email_verified')
    if verified is not True and verified != 'true':
        raise InvalidToken('email_verified is not true')
    if config.email and payload.get('email') != config.email:
        raise InvalidToken('wrong email %s (expected %s)'
                           % (_show(payload.get('email')), _show(config.email)))
    return payload


def check_request(authorization, config, now=None):
    """Verify a push's Authorization header against `config`; return the token's claims.

    Raises InvalidToken (reject: 401 when missing, else 403) or CertsUnavailable (503).
    """
    return verify_token(bearer_token(authorization), config, now=now)
