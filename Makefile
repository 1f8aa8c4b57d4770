# Two commands: `make run` (build .venv if missing, run the embedded study) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv run test test-browser dvc-yaml

# torch first: the CPU wheel is on disk, and installing it first keeps the package's torch
# range from pulling a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/snakemake --cores all --quiet rules
	@echo "Report: $(abspath reports/report.html)"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# the report in headless Chromium: needs Debian's `chromium` (apt-get install chromium) or PRUNEMEM_CHROMIUM;
# `make test` skips these tests, with the reason, where Playwright or a browser is missing
test-browser: $(BIN)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,browser]"
	$(BIN)/python -m pytest -q tests/test_report_browser.py -rs

dvc-yaml: $(BIN)/.installed
	$(BIN)/prunemem dvc-yaml
