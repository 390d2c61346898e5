# Everything starts here: `make run` brings the whole system up, `make test` proves it.
# Every target sets up what it needs first (virtual environments, vendored libs, the SDK).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .cache

# Ports of `make run` (override on the command line: make run SENDER_PORT=9080)
EMULATOR_PORT ?= 8085
SENDER_PORT ?= 8080
RECEIVER_PORT ?= 8081
# Who pushes to the receiver: the push worker, or the emulator itself (PUSH=emulator)
PUSH ?= worker
# SECURE=1: the emulator with TLS and --auth, every client with a key (README: make run SECURE=1)
SECURE ?= 0

# The App Engine side: Python 2.7, the SDK, vendoring, the verification token, deploy.
include mk/apps.mk

.PHONY: help setup run test test-py3 test-nats nats-server prometheus chromium lint bench emulator clean

help:
	@echo "make run          start emulator, sender, receiver and push worker (Ctrl-C stops all);"
	@echo "                 SECURE=1 with TLS, --auth and keys; PUSH=emulator: native push"
	@echo "make test         lint and run every test suite (Python 3 and the Python 2.7 apps)"
	@echo "make test-py3     the Python 3 suites (emulator, push worker, end to end)"
	@echo "make test-nats    the client-level suites again, the emulator on NATS JetStream"
	@echo "make test-apps    the Python 2.7 unit tests of both App Engine apps"
	@echo "make lint         ruff on the Python 3 code, then lint-py27"
	@echo "make lint-py27    flake8 under Python 2.7 on the apps, shared/ and tests/py27"
	@echo "make bench        print throughput and latency figures, ours beside Google's emulator"
	@echo "make emulator     run the emulator alone on EMULATOR_PORT with config/topology.yaml"
	@echo "make setup        prepare everything (venv, SDK, vendored lib/, token); run/test do it too"
	@echo "make sdk          install the App Engine SDK, pytest and WebTest for Python 2.7 (.py27/)"
	@echo "make flake8-py27  install flake8 for Python 2.7 (.py27/flake8)"
	@echo "make vendor       build each app's lib/ (pinned requirements + shared package)"
	@echo "make check-lib    check each app's lib/ holds nothing App Engine refuses (.so, .pth)"
	@echo "make token        make the push verification token (kept if present)"
	@echo "make py27         print the Python 2.7 interpreter the targets use"
	@echo "make nats-server  install nats-server if missing (apt-get, as root)"
	@echo "make prometheus   install Prometheus if missing (apt-get, as root; tests/test_metrics.py)"
	@echo "make chromium     install Chromium and its driver if missing (apt-get, as root; tests/test_console.py)"
	@echo "make deploy       deploy both apps with 'appscale deploy'"
	@echo "make clean        remove everything the targets above created"

$(STAMPS):
	@mkdir -p $@

# The Python 3 side: the emulator and the push worker, installed into .venv.
$(STAMPS)/venv.stamp: pyproject.toml | $(STAMPS)
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(STAMPS)/venv.stamp sdk flake8-py27 vendor token

emulator: $(STAMPS)/venv.stamp
	$(VENV)/bin/pubsub-emulator start --port $(EMULATOR_PORT) --config config/topology.yaml

run: setup
	$(PY) scripts/stack.py --python27 "$(PY27)" --sdk-dir "$(SDK_DIR)" \
	  --emulator-port $(EMULATOR_PORT) --sender-port $(SENDER_PORT) \
	  --receiver-port $(RECEIVER_PORT) --push $(PUSH) $(if $(filter 1,$(SECURE)),--secure)

# ruff for the Python 3 code (make_test_keys.py is Python 3 among the 2.7 tests: named
# explicitly, as pyproject.toml excludes tests/py27), flake8 under 2.7 for the 2.7 code.
lint: $(STAMPS)/venv.stamp lint-py27
	$(VENV)/bin/ruff check src tests bench scripts tests/py27/make_test_keys.py

# The NATS JetStream backend's tests start real nats-servers (Debian package nats-server).
nats-server:
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing nats-server (apt-get)"; \
	      apt-get install -y -q nats-server >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q nats-server >/dev/null; }; \
	    else echo "nats-server is missing: install it (apt-get install nats-server)"; exit 1; fi; }

# tests/test_metrics.py scrapes the emulator with a real Prometheus (Debian package prometheus;
# the test installs it too when missing, as root).
prometheus:
	@command -v prometheus >/dev/null || test -x /usr/bin/prometheus || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing prometheus (apt-get)"; \
	      export DEBIAN_FRONTEND=noninteractive; \
	      apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && \
	        apt-get install -y -q --no-install-recommends prometheus >/dev/null; }; \
	    else echo "prometheus is missing: install it (apt-get install prometheus)"; exit 1; fi; }

# tests/test_console.py drives the web console in a real headless Chromium through Selenium
# (Debian packages chromium and chromium-driver; Selenium never downloads a browser here).
chromium:
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing chromium and chromium-driver (apt-get)"; \
	      export DEBIAN_FRONTEND=noninteractive; \
	      apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && \
	        apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }; \
	    else echo "chromium is missing: install it (apt-get install chromium chromium-driver)"; \
	      exit 1; fi; }

test-py3: setup nats-server prometheus chromium
	PY27="$(PY27)" SDK_DIR="$(SDK_DIR)" $(VENV)/bin/pytest -q -p no:cacheprovider tests

# The client-level suites once more, with the emulator on the NATS JetStream backend.
NATS_SUITES := tests/test_emulator_clients.py tests/test_delivery_policies.py \
  tests/test_emulator_parity.py tests/test_emulator_errors.py tests/test_push.py \
  tests/test_schemas.py
test-nats: setup nats-server
	PUBSUB_TEST_STORE=nats $(VENV)/bin/pytest -q -p no:cacheprovider $(NATS_SUITES)

test: lint test-apps test-nats test-py3

# Figures for the README: the emulator beside Google's (when present), then the push worker.
# BENCH_ARGS=--quick for a one-minute run.
bench: setup
	$(PY) bench/bench.py $(BENCH_ARGS)
	$(PY) bench/push_worker_bench.py
	$(PY) bench/push_worker_bench.py --native
	$(PY) bench/delete_bench.py
	$(PY) bench/nats_bench.py
	$(PY) bench/fanout_bench.py
	$(PY) bench/cpu_bench.py $(filter --quick --skip-reference --skip-nats --skip-in-memory,$(BENCH_ARGS))

clean:
	rm -rf $(VENV) .py27 $(STAMPS) logs data pubsub-sender/lib pubsub-receiver/lib
