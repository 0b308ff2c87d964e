# The two commands of the README. Each creates .venv when missing and installs the package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deskpro-installed

.PHONY: demo test lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/deskpro demo

test: $(STAMP)
	$(PY) -c "import torchvision.ops"
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
