# Two entry points, each setting itself up on a fresh machine:
#   make serve   - the whole service on http://127.0.0.1:8000 (embedded Redis, no setup)
#   make test    - the test suite (what CI runs)
# TORCH pins the PyTorch build: torch==2.13.0 is the CPU build on the project's machines;
# on a GPU host use e.g. `make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" serve`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev,onnx,embedded,s3
BIN := $(VENV)/bin

.PHONY: serve test lint install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/hdr-service serve

test: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check service tests benchmarks load_tests
	$(BIN)/ruff format --check service tests benchmarks load_tests
	$(BIN)/mypy service

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
