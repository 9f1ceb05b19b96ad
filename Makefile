# The two commands of a fresh machine (see README.md):
#   make run    the main job: check and rule-test the example tenant, then run its video workflow
#               as a service on the embedded SQLite (make quickstart: only that part)
#   make test   the test suite (make test-slow: with the slow tests)
#   make run-local  the same workflow with no server (emirax run)
# Both create the virtual environment when it is missing and install the project into it.

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=
BIN := $(VENV)/bin
# Reinstall only when the project's metadata changes; the editable install follows the sources.
STAMP := $(VENV)/.emirax-installed
QUICKSTART = EMIRAX=$(BIN)/emirax PYTHON=$(BIN)/python bash tenants/media-encoding/quickstart.sh

.PHONY: run run-local test test-slow quickstart install clean

run: $(STAMP)
	$(BIN)/emirax check tenants/media-encoding
	$(BIN)/emirax test tenants/media-encoding
	$(QUICKSTART)

# The same workflow with no server: `emirax run` on this machine's threads.
run-local: $(STAMP)
	@mkdir -p build
	$(BIN)/emirax compile tenants/media-encoding -o build/media-encoding.emxb
	$(BIN)/emirax run build/media-encoding.emxb --workflow VideoEncode \
	    --facts tenants/media-encoding/request.json --functions tenants/media-encoding/functions.py

quickstart: $(STAMP)
	$(QUICKSTART)

# pytest's exit code 5 (no test collected) is a failure here: a suite that ran nothing is broken.
define pytest
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest ran no test; failing" >&2; exit 1; fi; \
	exit $$rc
endef

test: $(STAMP)
	$(pytest)

test-slow: $(STAMP)
	@EMIRAX_SLOW=1 $(MAKE) --no-print-directory test

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

clean:
	rm -rf build dist .pytest_cache .hypothesis .emirax-cache
	find emirax server tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
