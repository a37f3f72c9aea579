# sonm-p2p: every target sets up what it needs itself (see README).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the tests use (docker-registry, iptables, busybox-static, gcc ...).
.PHONY: setup venv debs docker images run test unit lint proto check-proto bench bench-scale clean

setup: venv debs docker images

debs:
	bash scripts/ensure-debs.sh

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

docker:
	bash scripts/ensure-docker.sh

images: debs docker
	bash scripts/build-images.sh

# A hub and two miners on this machine, then a demo task (see cli/devnet.py).
run: setup
	$(BIN)/sonm-devnet demo

proto: venv
	bash scripts/gen-proto.sh sonm_p2p/_pb

# Regenerate into a temp dir and compare: generated code must match its sources.
check-proto: venv
	@tmp=$$(mktemp -d) && bash scripts/gen-proto.sh $$tmp && \
	  if diff -r -x __pycache__ $$tmp sonm_p2p/_pb >/dev/null; then rm -rf $$tmp; echo "check-proto: generated code is current"; \
	  else diff -r -x __pycache__ $$tmp sonm_p2p/_pb | head -40; rm -rf $$tmp; echo "check-proto: drift, run 'make proto'" >&2; exit 1; fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: venv
	$(BIN)/pytest -q tests/unit

test: setup check-proto lint
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/run.py

# One hub with 100, 300 and 1,000 light miners, and an overlay of 100 hubs (~30-45 min): writes
# the "Scale" section of BENCHMARKS.md. SCALE_ARGS, e.g. --miners 100 --no-overlay.
bench-scale: venv
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
