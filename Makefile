# opsloop: `make demo` to try it in a terminal, `make test` to run everything. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench run check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	sh scripts/demo-repo examples/.demo-repo
	mkdir -p examples/.demo-versions
	OPSLOOP_HTTP_PORT=$${OPSLOOP_HTTP_PORT:-3000} $(BIN)/opsloop console --config examples/demo.yml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m bench

check: $(STAMP)
	$(BIN)/opsloop check --config $${OPSLOOP_CONFIG:-examples/demo.yml}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache examples/demo.db*
