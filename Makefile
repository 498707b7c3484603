# `make demo` and `make test` set everything up in .venv (re-used on later runs).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunesmith-installed

.PHONY: setup llama demo lint docs test clean-demo

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tunesmith needs Python >= 3.11 (found %s); set PYTHON=..." % sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, alone: the CPU wheel. Anything else first would pull a multi-GB CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# llama.cpp itself (the 'llama' extra, with its OpenAI-compatible server): `export --quant q4_k_m`, `export --verify`
# and tests/test_llama_cpp.py. PyPI has its source only: built for this CPU (cmake, a C++ compiler; 5.5 min on
# the 2-core EPYC). `.ci/run` runs this before `make test`; without it those tests are skipped.
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
llama: setup
	$(PY) -c 'import llama_cpp.server.app' 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE)" \
	  $(PY) -m pip install -q --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# the project's own rules: ruff's format and checks (pyproject [tool.ruff]), the layers without cycles (import-linter), and
# the size rules (modules <= 500 lines, functions <= 80, no function-local imports of our own modules)
lint: setup
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(PY) scripts/check_structure.py

# the docs site (mkdocs.yml): --strict turns every warning, a broken internal link or anchor included, into a
# failure; the command reference is generated from the CLI's parsers while it builds (scripts/mkdocs_hooks.py).
# NO_MKDOCS_2_WARNING quiets the theme's notice about its successor.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

test: lint docs
	$(PY) -m pytest -q -ra
	# speed guard: a ratio against a reference step timed in the same process (benchmarks/guard.py)
	$(PY) benchmarks/guard.py --check 1.3

clean-demo:
	rm -rf demo-out
