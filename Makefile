# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench dev-up dev-down clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[stack,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/skyshift demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The GPU/CPU benchmark suite on this machine (transfer benchmarks join it with the delta engine).
bench: $(STAMP)
	$(VENV)/bin/skyshift bench

dev-up: $(STAMP)
	$(VENV)/bin/skyshift dev up

dev-down: $(STAMP)
	$(VENV)/bin/skyshift dev down

clean:
	-$(VENV)/bin/skyshift dev down 2>/dev/null
	rm -rf $(VENV) .skyshift .pytest_cache
