# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ciap-installed
KERNEL := ciap

.PHONY: setup demo test bench browser lab mlflow-ui clean-runs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (ciap)"
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium for the browser tests (Playwright cannot download its own browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(PY) -m ciap_lib run experiments/default.yaml

test: setup browser
	$(PY) -m pytest

bench: setup
	$(PY) bench/train_throughput.py
	$(PY) bench/generation.py
	$(PY) bench/retrieval_scale.py
	$(PY) bench/demo_pipeline.py

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser --KernelManager.transport_encryption=auto notebooks/

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///mlflow.db
