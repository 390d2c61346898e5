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

# The App Engine side: Python 2.7, the SDK, vendoring, the verification token, deploy.
include mk/apps.mk

.PHONY: help setup run test test-py3 test-nats nats-server lint bench emulator clean

help:
	@echo "make run     start emulator, sender, receiver and push worker (Ctrl-C stops all)"
	@echo "make test    lint and run every test suite (Python 3 and the Python 2.7 apps)"
	@echo "make bench   print throughput and latency figures, ours beside Google's emulator"
	@echo "make setup   prepare everything (venv, SDK, vendored lib/, token); run/test do it too"
	@echo "make deploy  deploy both apps with 'appscale deploy'"
	@echo "make clean   remove everything the targets above created"

$(STAMPS):
	@mkdir -p $@

# The Python 3 side: the emulator and the push worker, installed into .venv.
$(STAMPS)/venv.stamp: pyproject.toml | $(STAMPS)
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(STAMPS)/venv.stamp sdk vendor token

emulator: $(STAMPS)/venv.stamp
	$(VENV)/bin/pubsub-emulator start --port $(EMULATOR_PORT) --config config/topology.yaml

run: setup
	$(PY) scripts/stack.py --python27 "$(PY27)" --sdk-dir "$(SDK_DIR)" \
	  --emulator-port $(EMULATOR_PORT) --sender-port $(SENDER_PORT) \
	  --receiver-port $(RECEIVER_PORT) --push $(PUSH)

lint: $(STAMPS)/venv.stamp
	$(VENV)/bin/ruff check src tests bench scripts

# The NATS JetStream backend's tests start real nats-servers (Debian package nats-server).
nats-server:
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing nats-server (apt-get)"; \
	      apt-get install -y -q nats-server >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q nats-server >/dev/null; }; \
	    else echo "nats-server is missing: install it (apt-get install nats-server)"; exit 1; fi; }

test-py3: setup nats-server
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

clean:
	rm -rf $(VENV) .py27 $(STAMPS) logs data pubsub-sender/lib pubsub-receiver/lib
