# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLI := $(BIN)/coproduction-monitor
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint unit integration bench kafka-up kafka-down schemas clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# the test extras (hypothesis, PySAL inequality + its geo stack, ...) only where they are needed
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(CLI) demo

# Lints, then starts the local broker unless KAFKA_BOOTSTRAP_SERVERS is set, runs every test,
# stops the broker it started (also when the tests fail). The unit tests run beside the
# integration tests (.ci/test.sh): one process took 1,092 s on a clean clone of 7009b92 (2 cores).
test: lint
	@bash .ci/with-broker.sh bash .ci/test.sh

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

unit: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	@bash .ci/with-broker.sh $(BIN)/python -m bench

kafka-up: $(STAMP)
	$(CLI) kafka up --topics

kafka-down: $(STAMP)
	$(CLI) kafka down

schemas: $(STAMP)
	$(CLI) schemas export

clean:
	rm -rf $(VENV) .state .pytest_cache
