# opsloop: `make demo` to try it in a terminal, `make test` to run everything. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench soak fuzz run check clean

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

# Every benchmark, each against its baseline in the same run (bench/README.md): the ack path, 100 build
# watches, the alert pipeline (ingestion, a storm against Alertmanager's own Slack receiver), DORA on 1M events.
bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.watch
	$(BIN)/python -m bench.alerts
	$(BIN)/python -m bench.dora

# Issue 7, figure 6: hypothesis's soak profile, over 100,000 examples; the counts go to bench/results/fuzz.md.
FUZZ := OPSLOOP_FUZZ=soak OPSLOOP_FUZZ_REPORT=bench/results/fuzz.md $(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability/test_fuzz.py

fuzz: $(STAMP)
	$(FUZZ)

# Issue 7 at full size (about 35 minutes): 10 minutes (SOAK_SECONDS) of mixed traffic against `opsloop run`;
# 1,000 duplicate trials and a 60 s Slack outage; 50 SIGKILLs with restarts; then the fuzzing.
soak: $(STAMP)
	$(BIN)/python -m bench.soak --duration $${SOAK_SECONDS:-600}
	OPSLOOP_TRIALS=1000 OPSLOOP_OUTAGE=60 OPSLOOP_RESULTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/reliability/test_duplicates.py tests/reliability/test_outage.py
	$(BIN)/python -m bench.crashes --kills 50
	$(FUZZ)

check: $(STAMP)
	$(BIN)/opsloop check --config $${OPSLOOP_CONFIG:-examples/demo.yml}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache examples/demo.db*
