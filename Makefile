# Two front doors: `make run` (install + the main job on generated sample data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := .cogflow/sample

.PHONY: install run test bench clean

# The venv is rebuilt only when pyproject.toml changes.
$(BIN)/cogflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/cogflow

install: $(BIN)/cogflow

run: install
	$(BIN)/cogflow sample-data $(SAMPLE) --videos 12
	$(BIN)/cogflow ingest $(SAMPLE)/manifest.csv
	$(BIN)/cogflow split
	$(BIN)/cogflow preview --random 8 -o .cogflow/clips.png
	$(BIN)/cogflow tokenize
	$(BIN)/cogflow train --stage 1
	$(BIN)/cogflow train --stage 2
	$(BIN)/cogflow generate "一个红色的圆形在米色背景上从左向右移动。" -o .cogflow/circle.mp4 --frames-out .cogflow/circle.png
	$(BIN)/cogflow generate "一个下午在海滩上奔跑的女人" -o .cogflow/beach.mp4 --frames-out .cogflow/beach.png
	$(BIN)/cogflow status

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python tests/bench/bench_ingest.py
	$(BIN)/python tests/bench/bench_split.py
	$(BIN)/python tests/bench/bench_tokenize.py
	$(BIN)/python tests/bench/bench_train.py
	$(BIN)/python tests/bench/bench_generate.py

clean:
	rm -rf $(VENV) .cogflow *.egg-info
