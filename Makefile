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
# Debian packages: apt-get as root, else sudo.
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: test lint typecheck unit browser-deps demo screenshot bench soak fuzz clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: Python >= 3.11 is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

# The real @datadog/browser-rum bundles (v5, v6, v7) for the demo page and the browser tests.
$(NODE_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	command -v npm >/dev/null || { $(APT) update -qq && $(APT) install -y -qq nodejs npm; }
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error

# Real Chromium from Debian for the browser tests (a test tool's own browser download cannot work offline).
browser-deps: $(NODE_STAMP)
	test -x /usr/bin/chromium || { $(APT) update -qq && $(APT) install -y -qq chromium; }

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

test: lint typecheck browser-deps
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest tests/proxy -m "not integration"

demo: $(STAMP) $(NODE_STAMP)
	$(PY) examples/demo/run.py

# Refreshes the tracked docs/demo.png (the demo's browser test, writing its screenshot there); `make test` never does.
screenshot: $(STAMP) browser-deps
	DEMO_SCREENSHOT=$(CURDIR)/docs/demo.png $(PY) -m pytest tests/browser/test_demo.py

# The proxy against direct, nginx and a plain aiohttp proxy in one run, then the hook's cost (bench/README.md).
# nginx and wrk come from Debian; taskset (util-linux) pins the load and the target to separate CPUs.
bench: $(STAMP)
	command -v nginx >/dev/null && command -v wrk >/dev/null || { $(APT) update -qq && $(APT) install -y -qq nginx-light wrk; }
	$(PY) bench/run.py --write
	$(PY) bench/hook_overhead.py --write

# Minutes of mixed traffic through one proxy; RSS and open FDs sampled (writes bench/RESULTS-soak.md).
soak: $(STAMP)
	$(PY) bench/soak.py --duration 180 --write

# The hardening battery's property and raw-request fuzz tests with many more examples than the default suite.
fuzz: $(STAMP)
	RUM_HARDENING_FUZZ_EXAMPLES=3000 $(PY) -m pytest -q tests/hardening/test_parser_properties.py \
		tests/hardening/test_fuzz_requests.py

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache .pytest_cache .hypothesis $(WEB)/node_modules
