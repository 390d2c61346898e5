"""Verification-token check for push endpoints (constant time)."""

import hmac
import logging
import os
import re

TOKEN_ENV = 'PUBSUB_VERIFICATION_TOKEN'
SECRET_FILE = 'secret.yaml'
_SECRET_RE = re.compile(
    r'''(?:^|[{,\s])PUBSUB_VERIFICATION_TOKEN\s*:\s*['"]?([A-Za-z0-9_.~+/=-]+)['"]?''', re.M)
# lib/pubsub_shared/auth.py -> the app directory
_APP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _to_bytes(value):
    if isinstance(value, bytes):
        return value
    return value.encode('utf-8')


def token_from_secret_file(app_dir=None):
    """The token in <app dir>/secret.yaml, or None.

    Fallback for platforms that do not merge `includes:` env_variables into the environment
    (appscale-tools sends only app.yaml's own env_variables); the file is deployed with the app.
    """
    path = os.path.join(app_dir or _APP_DIR, SECRET_FILE)
    try:
        with open(path) as f:
            match = _SECRET_RE.search(f.read())
    except (IOError, OSError):
        return None
    return match.group(1) if match else None


def expected_token(environ=None, app_dir=None):
    """The configured token (environment first, then secret.yaml), or None."""
    environ = os.environ if environ is None else environ
    token = (environ.get(TOKEN_ENV) or '').strip()
    return token or token_from_secret_file(app_dir)


def token_matches(provided, expected):
    """True when `provided` equals `expected`; compares in constant time.

    Fails closed: a missing expected or provided token never matches.
    """
    if not expected or provided is None:
        return False
    return hmac.compare_digest(_to_bytes(provided), _to_bytes(expected))


def check_request_token(provided, environ=None, app_dir=None):
    """Check a token taken from a request against the configured token."""
    expected = expected_token(environ, app_dir)
    if expected is None:
        logging.error('%s is not set (no env variable, no secret.yaml): rejecting every push; '
                      'run `make token` and redeploy.', TOKEN_ENV)
        return False
    return token_matches(provided, expected)
