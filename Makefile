# The two commands of the README. Each creates .venv when missing and installs the package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deskpro-installed

.PHONY: demo method test test-fast lint format clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/deskpro demo

# The method experiment at its CPU size: every row of Table 3, three seeds (docs/method.md).
method: $(STAMP)
	$(VENV)/bin/deskpro experiment method -o method-out

# Everything, the slow end-to-end tests (demo, Ray, DDP) included: what CI runs.
test: $(STAMP)
	$(PY) -c "import torchvision.ops"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

# The edit loop: lint and every test not marked slow (about a minute on 2 cores).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
