# QuantFlow: `make run` runs the whole pipeline on the sample project; `make test` runs every test.
# Both create the virtual environment when it is missing.

VENV        ?= .venv
PYTHON      ?= $(shell command -v python3.11 || command -v python3)
BIN         := $(VENV)/bin
SAMPLE_START ?= 2024-01-02
SAMPLE_END   ?= 2024-03-28
export DAGSTER_HOME ?= $(CURDIR)/.temp

.PHONY: install run test test-fast dev bench lint clean

# uv installs the ~280 packages in parallel in about 17 s on 2 cores, where pip took 90 s; it does not read
# pip's configuration, so pip's find-links (where a local CPU build of PyTorch may lie) are passed on.
# No --compile-bytecode: compiling all 28,000 modules took another 50 s, most of them never imported;
# Python compiles a module the first time a run imports it instead, and keeps the bytecode, for which
# the targets below undo a PYTHONDONTWRITEBYTECODE from the environment (else every run would compile
# every module it imports again)
unexport PYTHONDONTWRITEBYTECODE
FIND_LINKS   = $(sort $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV           = $(BIN)/uv pip install --quiet --python $(BIN)/python $(foreach d,$(FIND_LINKS),--find-links $(d))

$(BIN)/.quantflow-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	# the CPU build of PyTorch first: an unpinned resolve can pull a multi-GB CUDA build
	$(UV) torch==2.13.0
	$(UV) -e '.[dev]'
	touch $@

install: $(BIN)/.quantflow-installed

run: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/qf run --stage all --start $(SAMPLE_START) --end $(SAMPLE_END)

test: install
	$(BIN)/python -m pytest -q --durations=10

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

dev: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w dagster_workspace.yaml

bench: install
	$(BIN)/python benchmarks/run_all.py

lint: install
	$(BIN)/ruff check quantflow tests benchmarks

clean:
	rm -rf .quantflow .temp dbt_project/target dbt_project/logs
