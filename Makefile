# spark-relay: every target installs what it needs first.
VENV   := .venv
BIN    := $(VENV)/bin
PYTHON ?= python3

.PHONY: install demo test lint bench chaos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml examples/spark-relay-example-sink/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e examples/spark-relay-example-sink
	touch $@

demo: install
	$(BIN)/spark-relay demo

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

# The convergence campaign (docs/guarantees.md): SEEDS worlds of ROUNDS rounds of seeded chaos.
SEEDS  ?= 3
ROUNDS ?= 8
chaos: install
	$(BIN)/python -m chaos --seeds $(SEEDS) --rounds $(ROUNDS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
