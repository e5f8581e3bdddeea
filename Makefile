# amr-gateway — the two set-up commands of the README, plus lint and bench.
#   make demo   install everything into .venv and run `amr-gateway demo`
#   make test   install everything, run `make lint` (ruff, mypy --strict, import-linter: a broken
#               contract fails CI), start mosquitto + victoria-metrics if absent, run every test
#               (and stop again the services it started)
#   make deb    dist/amr-gateway_<version>_<arch>.deb (ARCH=arm64 for the ARM boxes)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench services deb clean

ARCH ?= $(shell dpkg --print-architecture 2>/dev/null || echo amd64)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "amr-gateway needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/amr-gateway demo $(DEMO_ARGS)

services:
	bash scripts/ensure-services.sh start

# Workers for the suite (pytest-xdist): most of a test's time is waiting for a peer or a simulated
# clock, so more workers than cores; PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 4

# Lints first (so .ci/run, which runs `make test`, fails on a lint or layer-contract error),
# starts the services that are not running, runs pytest, then stops what it started (and
# only that), keeping pytest's exit status.
test: $(STAMP) lint
	@record=$$(mktemp); \
	bash scripts/ensure-services.sh start "$$record" || { bash scripts/ensure-services.sh stop "$$record"; exit 1; }; \
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); status=$$?; \
	bash scripts/ensure-services.sh stop "$$record"; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check gateway drivers tests bench
	$(BIN)/mypy
	$(BIN)/mypy --strict --explicit-package-bases --ignore-missing-imports bench/*.py
	$(BIN)/lint-imports --no-cache

bench: $(STAMP) services
	$(BIN)/python -m bench.serial_bus
	$(BIN)/python -m bench.tcp_fleet

deb: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/build-deb.sh $(ARCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
