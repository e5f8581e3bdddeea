# amr-gateway — the two set-up commands of the README, plus lint and bench.
#   make demo   install everything into .venv and run `amr-gateway demo`
#   make test   install everything, start mosquitto + victoria-metrics if absent, run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench services clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "amr-gateway needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/amr-gateway demo $(DEMO_ARGS)

services:
	bash scripts/ensure-services.sh

test: $(STAMP) services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway drivers tests bench
	$(BIN)/mypy
	$(BIN)/mypy --strict --explicit-package-bases --ignore-missing-imports bench/*.py
	$(BIN)/lint-imports --no-cache

bench: $(STAMP) services
	$(BIN)/python -m bench.serial_bus
	$(BIN)/python -m bench.tcp_fleet

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
