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
	@command -v prometheus >/dev/null && command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium >/dev/null) || \
		echo "prometheus or chromium could not be installed: the tests that need them skip"
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Transfer engine vs rclone and rsync (installs them), then the GPU/CPU suite on this machine.
bench: $(STAMP)
	command -v rclone >/dev/null && command -v rsync >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq rclone rsync)
	$(PY) -m bench.transfer
	$(VENV)/bin/skyshift bench

dev-up: $(STAMP)
	$(VENV)/bin/skyshift dev up

dev-down: $(STAMP)
	$(VENV)/bin/skyshift dev down

clean:
	-$(VENV)/bin/skyshift dev down 2>/dev/null
	rm -rf $(VENV) .skyshift .pytest_cache
