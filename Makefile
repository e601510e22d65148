# Every target runs in one environment: the active virtualenv if there is one,
# otherwise .venv at the repository root (created and filled on first use).
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(CURDIR)/.venv)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cpllm-installed
PYTEST_ARGS ?= -n auto --dist loadfile

.PHONY: setup test test-fast demo bench bench-quick clean

setup: $(STAMP)

# requirements-baselines.txt: BRISQUE's heavy dependencies (OpenCV), for the real-footage
# table; installed here too so that its tests run rather than skip.
$(STAMP): requirements.txt requirements-baselines.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -r requirements-baselines.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

# pytest exits 5 when it collected no tests; make treats that as a failure too.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) tests

# The unit tests alone (the tests marked slow left out: end to end, subprocesses, dataset
# builds, the compile-heavy ones); `make test` stays the full suite that CI runs.
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

demo: $(STAMP)
	$(PY) -m cpllm.demo

# Benchmarks (BENCHMARKS.md): each writes bench/results/<name>.json, then the tables in
# BENCHMARKS.md are rewritten from them. bench-quick: fewer repeats, smaller sweeps.
bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

clean:
	rm -rf runs .pytest_cache
