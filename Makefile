# Two entry points, each creating and reusing the local virtual environment .venv:
#   make demo   -- the main job, offline on the built-in default: the package, its notebook and plot extras
#   make test   -- the whole test suite (ruff + pytest): everything else too
# Each has its own install stamp, so a `make test` after a `make demo` still installs what tests need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
SERVE_STAMP := $(VENV)/.installed-serve

.PHONY: demo test serve bench bench-peers bench-scale bench-smoke bench-stores lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml Makefile | $(PY)
	@echo 'installing the package and its notebook extras into $(VENV)/ (once; a minute or two)'
	$(PY) -m pip install --quiet -e '.[notebook,plot]'
	touch $@

$(TEST_STAMP): pyproject.toml Makefile | $(PY)
	@echo 'installing the package, its extras and the test tools into $(VENV)/ (once; a minute or two)'
	$(PY) -m pip install --quiet -e '.[test,notebook,gateway,grpc,quic,plot,redis,postgres,otel]'
	touch $@

$(SERVE_STAMP): pyproject.toml Makefile | $(PY)
	@echo 'installing the gateway extra into $(VENV)/ (once; a minute or two)'
	$(PY) -m pip install --quiet -e '.[gateway]'
	touch $@

# the gateway on 127.0.0.1:8787 (`make serve ARGS="--config gtl.toml"` for more); installs its extra once
serve: $(SERVE_STAMP)
	$(VENV)/bin/gtl serve $(ARGS)

demo: $(DEMO_STAMP)
	$(PY) -m gtl_nb.demo
	$(PY) -m gtl_nb.notebook.runner --out out

# pytest in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them: its servers and
# module fixtures start once. 2 fits the 2-core machines CI runs on; TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

test: $(TEST_STAMP)
	$(PY) -m ruff check gtl_nb tests bench
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30

# Benchmarks (docs/benchmarks.md): `bench` the full suite (~15 min, writes docs/benchmarks.md), with LiteLLM
# when .venv-peers has it; `bench-peers` installs LiteLLM's proxy there first, then runs the suite;
# `bench-smoke` the whole pipeline in under a minute (what CI runs); `bench-scale` 10,000 concurrent
# streams in one gateway process (its upstream over HTTP/2: needs RLIMIT_NOFILE > 11,024; never in CI).
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-peers
LITELLM_SPEC ?= litellm[proxy]==1.106.*

bench: $(TEST_STAMP)
	$(PY) -m bench

$(PEERS_STAMP):
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet '$(LITELLM_SPEC)'
	touch $@

bench-peers: $(TEST_STAMP) $(PEERS_STAMP)
	$(PY) -m bench --peers on

bench-smoke: $(TEST_STAMP)
	$(PY) -m bench --smoke

bench-scale: $(TEST_STAMP)
	$(PY) -m bench.scale

# What sharing costs (~5 min; writes its section of docs/benchmarks.md): the gateway on Redis and PostgreSQL
# against memory and SQLite, in one run; needs redis-server and PostgreSQL 15 (bench/bench_stores.py).
bench-stores: $(TEST_STAMP)
	$(PY) -m bench.bench_stores

clean:
	rm -rf $(VENV) $(PEERS_VENV) .pytest_cache .ruff_cache
