# Two entry points, each creating and reusing the local virtual environment .venv:
#   make demo   -- the main job, offline on the built-in default
#   make test   -- the whole test suite (ruff + pytest)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,gateway,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m gtl_nb.demo
	$(PY) -m gtl_nb.notebook.runner --out out

test: $(STAMP)
	$(PY) -m ruff check gtl_nb tests bench
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
