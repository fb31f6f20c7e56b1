# Two entry points, each creating and reusing the local virtual environment .venv:
#   make demo   -- the main job, offline on the built-in default: the package and its notebook extra only
#   make test   -- the whole test suite (ruff + pytest): everything else too
# Each has its own install stamp, so a `make test` after a `make demo` still installs what tests need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[notebook]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,notebook,gateway,grpc,quic,plot]'
	touch $@

demo: $(DEMO_STAMP)
	$(PY) -m gtl_nb.demo
	$(PY) -m gtl_nb.notebook.runner --out out

test: $(TEST_STAMP)
	$(PY) -m ruff check gtl_nb tests bench
	$(PY) -m pytest -q

bench: $(TEST_STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
