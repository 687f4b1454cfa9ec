# tfembsize developer commands. `make demo` and `make test` work on a fresh machine with only
# Python 3.11 and pip: they create .venv if missing and install the package (editable) first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.tfembsize-installed
PYTEST_ARGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

.PHONY: install demo docs test test-keras3 test-legacy test-slow lint format clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip

$(STAMP): $(VPY) setup.cfg pyproject.toml
	$(VPY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VPY) examples/demo.py

# The API reference, HTML from the docstrings (pdoc, in the dev extra), in build/docs/;
# any pdoc warning fails it.
docs: $(STAMP)
	$(VPY) docs/build_api.py --output build/docs

lint: $(STAMP)
	$(VPY) -m ruff check tfembsize tests benchmarks examples docs/build_api.py
	$(VPY) -m ruff format --check tfembsize tests benchmarks examples docs/build_api.py
	$(VPY) -m mypy

format: $(STAMP)
	$(VPY) -m ruff format tfembsize tests benchmarks examples docs/build_api.py
	$(VPY) -m ruff check --fix tfembsize tests benchmarks examples docs/build_api.py

# The whole suite twice: Keras 3 (plain TensorFlow) and tf-keras (TF_USE_LEGACY_KERAS=1).
# Both modes always run; the target fails if either fails.
test: $(STAMP)
	@status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	$(MAKE) --no-print-directory test-keras3 || status=1; \
	$(MAKE) --no-print-directory test-legacy || status=1; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED (see above)"; fi; \
	exit $$status

test-keras3: $(STAMP)
	@echo "=== tests under Keras 3 (plain TensorFlow) ==="
	env -u TF_USE_LEGACY_KERAS $(VPY) -m pytest $(PYTEST_ARGS)

test-legacy: $(STAMP)
	@echo "=== tests under tf-keras (TF_USE_LEGACY_KERAS=1) ==="
	TF_USE_LEGACY_KERAS=1 $(VPY) -m pytest $(PYTEST_ARGS)

# Long runs (searches, real-data convergence) kept out of CI.
test-slow: $(STAMP)
	env -u TF_USE_LEGACY_KERAS $(VPY) -m pytest -m slow $(PYTEST_ARGS)
	TF_USE_LEGACY_KERAS=1 $(VPY) -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
