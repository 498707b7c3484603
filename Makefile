# `make demo` and `make test` set everything up in .venv (re-used on later runs).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunesmith-installed

.PHONY: setup demo lint test clean-demo

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tunesmith needs Python >= 3.11 (found %s); set PYTHON=..." % sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, alone: the CPU wheel. Anything else first would pull a multi-GB CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# the project's own rules: ruff's format and checks (pyproject [tool.ruff]), the layers without cycles (import-linter), and
# the size rules (modules <= 500 lines, functions <= 80, no function-local imports of our own modules)
lint: setup
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(PY) scripts/check_structure.py

test: lint
	$(PY) -m pytest -q -ra
	# speed guard: a ratio against a reference step timed in the same process (benchmarks/guard.py)
	$(PY) benchmarks/guard.py --check 1.3

clean-demo:
	rm -rf demo-out
