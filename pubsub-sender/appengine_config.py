"""Make the vendored packages in lib/ importable (run `make vendor` to build lib/)."""
import os

from google.appengine.ext import vendor

_LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lib')
if not os.path.isdir(_LIB):
    raise ImportError('%s is missing: run `make vendor` before serving or deploying' % _LIB)
vendor.add(_LIB)

# The SDK's `google` package is a regular package: extend it with lib/google if present.
_LIB_GOOGLE = os.path.join(_LIB, 'google')
if os.path.isdir(_LIB_GOOGLE):
    import google
    if _LIB_GOOGLE not in google.__path__:
        google.__path__.append(_LIB_GOOGLE)
