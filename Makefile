# cloudkernel developer entry points. Every target installs first (quick when nothing changed).
#   make run                      install, then start cloudkernel (`cloudkernel up $(RUN_ARGS)`)
#   make test PYTEST_ARGS='-k x'  install, then run pytest with PYTEST_ARGS
#   make lint                     install, then ruff, mypy and lint-imports (the layering)
#   make mutation                 install, then mutation testing of the core modules (not in CI;
#                                 MUTATION_ARGS='aggregates/host.py' runs one module)

SHELL := /bin/bash
VENV ?= .venv
PYTEST_ARGS ?=
RUN_ARGS ?=
MUTATION_ARGS ?=

.PHONY: install run test lint mutation

install:
	VENV="$(abspath $(VENV))" bash scripts/install.sh

run: install
	$(VENV)/bin/cloudkernel up $(RUN_ARGS)

test: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

mutation: install
	$(VENV)/bin/python scripts/mutation.py $(MUTATION_ARGS)
