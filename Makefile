# Two front doors: `make demo` (install + the main job: sample data through the whole pipeline to a registered
# champion and a video) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo lint test bench clean up down stack-status

# The venv is rebuilt only when pyproject.toml changes. The demo needs cogflow alone; the test tools (pytest, moto,
# mypy, ruff) come on top for `make test` and the rest, so a first `make demo` does not wait for them.
VENV_UP = $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml
	$(VENV_UP)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(VENV_UP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/cogflow demo

# ruff (lint and format) and mypy. mypy cannot follow the package-dir mapping of pyproject.toml (the root is the
# `cogflow` package), so it reads the package through a link named cogflow to this checkout.
TYPECHECK = mkdir -p $(VENV)/typecheck && ln -sfn "$(CURDIR)" $(VENV)/typecheck/cogflow && MYPYPATH=$(VENV)/typecheck $(BIN)/mypy -p cogflow

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(TYPECHECK)

# ruff first (a second), then the tests with mypy beside them: mypy's first run takes about 35 s of one core, which
# the suite's waits on servers and child processes leave free. One worker per core; a test file stays on one worker,
# so its module fixtures (a split lake, a trained pair) are built once. Fails if the tests or mypy fail.
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@$(TYPECHECK) > $(VENV)/mypy.log 2>&1 & typed=$$!; \
	$(BIN)/python -m pytest -q -n auto --dist loadfile tests; tests=$$?; \
	wait $$typed; types=$$?; echo "mypy:"; cat $(VENV)/mypy.log; \
	test $$tests -eq 0 && test $$types -eq 0

bench: install
	$(BIN)/python tests/bench/bench_ingest.py
	$(BIN)/python tests/bench/bench_split.py
	$(BIN)/python tests/bench/bench_curation.py
	$(BIN)/python tests/bench/bench_tokenize.py
	$(BIN)/python tests/bench/bench_train.py
	$(BIN)/python tests/bench/bench_generate.py

clean:
	-test -x $(BIN)/python && $(BIN)/python infra/stack.py down  # a running stack keeps its state in .cogflow
	rm -rf $(VENV) .cogflow *.egg-info .mypy_cache .ruff_cache

# The whole stack on this machine, no Docker (infra/stack.py, infra/README.md): S3 (moto), MLflow, a Prefect
# server, the deployments of prefect.yaml and a worker per pool. Options: make up STACK_ARGS="--no-worker".
up: install
	$(BIN)/python infra/stack.py up $(STACK_ARGS)

down:
	$(BIN)/python infra/stack.py down

stack-status:
	$(BIN)/python infra/stack.py status
