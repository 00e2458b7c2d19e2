# streamproc: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092
export KAFKA_PORT

.PHONY: help install lock test lint promtool bench run observe chaos kafka-up kafka-down clean

# promtool checks the alert rules, their unit tests, the dashboard's queries and /metrics
# (tests/test_alert_rules.py and others). The one on PATH, else promtool from Debian's
# prometheus package, unpacked (not installed: no service, nothing outside .cache/).
PROMTOOL_CACHED := $(CURDIR)/.cache/prometheus/usr/bin/promtool
PROMTOOL ?= $(or $(shell command -v promtool),$(PROMTOOL_CACHED))

# kustomize's own library renders deploy/kubernetes as `kubectl apply -k` would
# (tests/test_deploy.py): built once from the Go module proxy into .cache/bin.
KUSTOMIZE_BUILD := $(CURDIR)/.cache/bin/kustomize-build
# The CRDs the custom resources in deploy/ are checked against: KEDA's and the Prometheus
# Operator's, as their Go modules ship them (downloaded from the Go module proxy).
GO_ENV := GOMODCACHE=$(CURDIR)/.cache/go/mod GOCACHE=$(CURDIR)/.cache/go/build GOFLAGS=-modcacherw
CRD_MODULES := github.com/kedacore/keda/v2@v2.18.1 \
  github.com/prometheus-operator/prometheus-operator@v0.85.0
CRDS := $(CURDIR)/.cache/go/crds.stamp
# kube-score, the Kubernetes objects' best-practice checks (tests/test_deploy.py).
KUBE_SCORE := $(CURDIR)/.cache/bin/kube-score

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

# Every package at the version and hashes of the lock (deploy/requirements/test.txt, made
# by `make lock` from pyproject.toml); streamproc itself editable, built by the locked
# hatchling.
$(BIN)/streamproc: pyproject.toml deploy/requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r deploy/requirements/test.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/streamproc ## create .venv with streamproc and its test extras, from the lock

lock: install ## pin every dependency with its hashes again (uv), after editing pyproject.toml
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile -q --generate-hashes --python-version 3.11 pyproject.toml \
	  deploy/requirements/build.in --extra test -o deploy/requirements/test.txt
	$(BIN)/uv pip compile -q --generate-hashes --python-version 3.11 pyproject.toml \
	  -o deploy/requirements/runtime.txt
	$(BIN)/uv pip compile -q --generate-hashes --python-version 3.11 \
	  deploy/requirements/build.in -o deploy/requirements/build.txt

lint: install ## ruff and mypy --strict
	$(BIN)/ruff check streamproc tests
	$(BIN)/ruff format --check streamproc tests
	$(BIN)/mypy

test: lint $(PROMTOOL) $(KUSTOMIZE_BUILD) $(CRDS) $(KUBE_SCORE) ## lint, then all of pytest against a broker of its own (Kafka jars via Maven)
	$(BIN)/python -m tests.localkafka jars
	PROMTOOL=$(PROMTOOL) PROMTOOL_REQUIRED=1 KUSTOMIZE_BUILD=$(KUSTOMIZE_BUILD) \
	  KUBE_SCORE=$(KUBE_SCORE) KUSTOMIZE_REQUIRED=1 $(BIN)/pytest

$(KUSTOMIZE_BUILD): tests/kustomize/main.go tests/kustomize/go.mod tests/kustomize/go.sum
	mkdir -p $(dir $@)
	cd tests/kustomize && $(GO_ENV) go build -o $@ .

$(KUBE_SCORE):
	mkdir -p $(dir $@)
	$(GO_ENV) GOBIN=$(dir $@) go install github.com/zegl/kube-score/cmd/kube-score@v1.20.0

$(CRDS):
	mkdir -p $(dir $@)
	$(GO_ENV) go mod download $(CRD_MODULES)
	touch $@

promtool: $(PROMTOOL) ## print the promtool the tests use (PATH, else unpacked into .cache/)
	@echo $(PROMTOOL)

# apt-get download needs no lock and installs nothing; a machine whose package lists are
# missing or stale finds no candidate, so update them once and try again.
$(PROMTOOL_CACHED):
	rm -rf .cache/prometheus
	mkdir -p .cache/prometheus/deb
	cd .cache/prometheus/deb && { apt-get download -qq prometheus 2>/dev/null \
	  || { apt-get update -qq && apt-get download -qq prometheus; }; }
	dpkg-deb -x .cache/prometheus/deb/prometheus_*.deb .cache/prometheus
	rm -rf .cache/prometheus/deb
	test -x $@ && touch $@

bench: install kafka-up ## run every benchmark against the local broker, print one table
	$(BIN)/python -m tests.bench

fuzz: install kafka-up ## 100,000 generated pushes against streamproc receive, 100,000 records through streamproc map
	$(BIN)/python -m tests.fuzz

run: install ## the whole pipeline locally: broker, simulators, every role, live progress
	$(BIN)/python -m tests.devrun

observe: install $(PROMTOOL) ## make run plus a real Prometheus with deploy/'s alert rules (http://127.0.0.1:9090)
	PROMETHEUS=$(or $(shell command -v prometheus),$(dir $(PROMTOOL))prometheus) $(BIN)/python -m tests.devrun

# Options as variables: CHAOS_SEED, CHAOS_ITEMS, CHAOS_SECONDS, CHAOS_DRAIN_LIMIT,
# CHAOS_BROKER_RESTARTS, CHAOS_OUTAGE_SECONDS, CHAOS_KILL_EVERY, CHAOS_PARTITIONS, CHAOS_LOG_DIR.
chaos: install ## every role killed, the broker restarted, mParticle down: what was lost (CHAOS_SEED...)
	$(BIN)/python -m tests.localkafka jars >/dev/null
	$(BIN)/python -m tests.chaos

kafka-up: install ## start the local Kafka broker on KAFKA_PORT (default 9092) if not up
	$(BIN)/python -m tests.localkafka up --port $(KAFKA_PORT)

kafka-down: ## stop the local Kafka broker
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tests.localkafka down --port $(KAFKA_PORT); fi

clean: kafka-down ## stop the broker, remove the venv, caches and broker data
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis
