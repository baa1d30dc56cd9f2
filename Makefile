# Every target creates and reuses .venv by itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HOST   ?= 127.0.0.1
PORT   ?= 8000
NAME   ?= bump
TEMPLATE ?=
ARGS   ?=
SOAK_SECONDS ?= 60

.PHONY: help install install-serve lock-serve browser nginx wrk test soak audit train train-dry serve bench bench-quick clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Everything: serving, training and development tools (the CPU build of torch).
$(VENV)/.installed-all: pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet -c constraints.txt -e '.[serve,train,dev]'
	touch $@ $(VENV)/.installed-serve

# Serving only: no torch.
$(VENV)/.installed-serve: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[serve]'
	touch $@

install: $(VENV)/.installed-all  ## install everything into .venv
install-serve: $(VENV)/.installed-serve  ## install the serving runtime only (no torch)

LOCK_VENV := /tmp/shape-detector-lock-serve

# The image's serving packages (Dockerfile): re-pinned from a fresh resolve of the serve extra.
lock-serve:  ## re-pin requirements-serve.txt, the image's packages, to what `.[serve]` resolves to now
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve']))" > $(LOCK_VENV)/serve.in
	$(LOCK_VENV)/bin/pip install --quiet -r $(LOCK_VENV)/serve.in
	{ grep '^#' requirements-serve.txt; $(LOCK_VENV)/bin/pip freeze; } > requirements-serve.txt.new
	mv requirements-serve.txt.new requirements-serve.txt
	rm -rf $(LOCK_VENV)

browser:  ## Debian's Chromium for the browser tests (never Playwright's download)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

nginx:  ## Debian's nginx for the load-balancer tests (tests/deploy)
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null)

wrk:  ## Debian's wrk, the load generator of the benchmarks
	@command -v wrk >/dev/null 2>&1 || test -x /usr/bin/wrk || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)

test: $(VENV)/.installed-all browser nginx  ## lint and run the whole test suite
	$(VENV)/bin/ruff check app training tests benchmarks
	$(VENV)/bin/ruff format --check app training tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

soak: $(VENV)/.installed-all  ## load runs of SOAK_SECONDS (default 60) against a real server: 32 clients; clients that leave; bursts of the largest requests within compose's memory limit
	SHAPE_DETECTOR_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s -m soak tests/reliability/test_load.py tests/reliability/test_leavers.py tests/reliability/test_memory.py

audit: $(VENV)/.installed-all  ## known vulnerabilities in the installed packages (PyPI advisory data)
	$(VENV)/bin/pip-audit --strict --progress-spinner off --vulnerability-service pypi --skip-editable

train: $(VENV)/.installed-all  ## train, evaluate and export models/$(NAME) (TEMPLATE=shape.csv, ARGS)
	$(PY) -m training.train --name $(NAME) $(if $(TEMPLATE),--template $(TEMPLATE)) $(ARGS)

train-dry: $(VENV)/.installed-all  ## a tiny end-to-end training run into /tmp
	$(PY) -m training.train --dry-run --out /tmp/shape-detector-dry $(ARGS)

serve: $(VENV)/.installed-serve  ## serve models/ on HOST:PORT (default 127.0.0.1:8000)
	SHAPE_DETECTOR_HOST=$(HOST) SHAPE_DETECTOR_PORT=$(PORT) $(PY) -m app

bench: $(VENV)/.installed-all wrk  ## benchmarks (report, never fail on timing)
	$(PY) -m benchmarks.bench_model
	$(PY) -m benchmarks.session_options
	$(PY) -m benchmarks.peaks
	$(PY) -m benchmarks.decode
	$(PY) -m benchmarks.run $(ARGS)
	$(PY) -m benchmarks.breakdown

bench-quick: $(VENV)/.installed-all wrk  ## one-minute smoke run of the benchmark harness
	$(PY) -m benchmarks.run --quick $(ARGS)

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
