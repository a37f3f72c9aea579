# sonm-p2p: every target sets up what it needs itself (see README).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the tests use (docker-registry, iptables, busybox-static, gcc ...).
.PHONY: setup venv debs browser docker images image anvil run test unit lint proto check-proto contract check-contract bench bench-scale clean

setup: venv debs docker images anvil

debs:
	bash scripts/ensure-debs.sh

# Debian's chromium, for the hub page's headless test (not needed by `make run`).
browser:
	bash scripts/ensure-debs.sh --browser

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat: the checkout's path in a .pth, not setuptools' import hook (~20 ms of every start-up)
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

docker:
	bash scripts/ensure-docker.sh

# anvil, the local Ethereum node of the chain tests and the devnet: npm @foundry-rs/anvil, pinned
# in package.json / package-lock.json (the package ships the binary; nothing else is fetched).
ANVIL := node_modules/.bin/anvil
anvil: $(ANVIL)
$(ANVIL): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	$(ANVIL) --version >/dev/null && touch $(ANVIL)

images: debs docker
	bash scripts/build-images.sh

# The project as a container image, sonm-p2p:latest (Dockerfile; no registry needed).
image: venv docker
	PY=$(BIN)/python bash scripts/build-image.sh

# sonm-devnet demo: up (a hub, two miners), a demo task and how to reach it, down at Ctrl-C.
run: setup
	$(BIN)/sonm-devnet demo

proto: venv
	bash scripts/gen-proto.sh sonm_p2p/_pb

# Regenerate into a temp dir and compare: generated code must match its sources.
check-proto: venv
	@tmp=$$(mktemp -d) && bash scripts/gen-proto.sh $$tmp && \
	  if diff -r -x __pycache__ $$tmp sonm_p2p/_pb >/dev/null; then rm -rf $$tmp; echo "check-proto: generated code is current"; \
	  else diff -r -x __pycache__ $$tmp sonm_p2p/_pb | head -40; rm -rf $$tmp; echo "check-proto: drift, run 'make proto'" >&2; exit 1; fi

# The hub registry (contracts/HubRegistry.vy), compiled in-process by vyper into the artifact
# the code deploys; check-contract fails when the checked-in artifact drifts from the source.
contract: venv
	$(BIN)/python scripts/gen-contract.py sonm_p2p/chain/HubRegistry.json

check-contract: venv
	@tmp=$$(mktemp) && $(BIN)/python scripts/gen-contract.py $$tmp && \
	  if cmp -s $$tmp sonm_p2p/chain/HubRegistry.json; then rm -f $$tmp; echo "check-contract: artifact is current"; \
	  else rm -f $$tmp; echo "check-contract: drift, run 'make contract'" >&2; exit 1; fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: venv
	$(BIN)/pytest -q tests/unit

test: setup browser check-proto check-contract lint
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/run.py

# One hub with 100, 300 and 1,000 light miners, and an overlay of 100 hubs (~30-45 min): writes
# the "Scale" section of BENCHMARKS.md. SCALE_ARGS, e.g. --miners 100 --no-overlay.
bench-scale: venv
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info node_modules
