# Two entry points, each doing its own set-up on a fresh machine:
#   make experiment   the main job
#   make test         the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: experiment test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0            # CPU wheel first, so nothing pulls a CUDA build
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

experiment: $(STAMP)
	$(BIN)/python -m harness.launch

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m sltestbed.bench

clean:
	rm -rf $(VENV)
