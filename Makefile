# One command each, doing all of its own set-up on a fresh machine with Python 3.11+:
#   make demo   - the built-in sandbox plus the agent, push and the repair loop wired (no
#                 credentials): http://127.0.0.1:9877/metrics, webhooks on 127.0.0.1:9879
#   make test   - installs Python packages, Prometheus, Alertmanager and helm, then runs every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit lint tools generate bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dashboards]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/openfinance-exporter demo

tools:
	bash scripts/install-tools.sh

test: $(STAMP) tools
	$(BIN)/ruff check .
	PATH="$(CURDIR)/.tools/helm:$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .

generate: $(STAMP)
	$(BIN)/python -m alerts.generate
	$(BIN)/python -m dashboards.generate
	$(BIN)/python -m helm.sync

bench: $(STAMP)
	$(BIN)/python bench/bench_tracker.py

clean:
	rm -rf $(VENV) .tools .pytest_cache
