# XAStruct: `make demo` installs and runs the main job on the embedded default data;
# `make test` installs and runs the test suite (with a throwaway PostgreSQL when one can be started).
VENV   ?= .venv
PY     := $(VENV)/bin/python
XAS    := $(VENV)/bin/xastruct
DB     ?= duckdb:///./xastruct.duckdb
PYTEST_ARGS ?= -m "not slow" -n 2

.PHONY: install demo test test-all dataset clean

install: $(VENV)/.installed

# torch first, pinned: that CPU wheel is on disk here; an unpinned torch would pull GBs of CUDA.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(XAS) ingest builtin --db $(DB)
	$(XAS) stats --db $(DB)

test: install
	@url=$$(.ci/pg.sh start 2>/dev/null) || url=""; \
	if [ -n "$$url" ]; then echo "PostgreSQL for store tests: $$url"; else echo "PostgreSQL unavailable: its tests skip"; fi; \
	XASTRUCT_TEST_PG_URL="$$url" $(PY) -m pytest $(PYTEST_ARGS) -q -p no:cacheprovider; rc=$$?; \
	.ci/pg.sh stop; exit $$rc

# Regenerate the embedded default dataset from scratch (resumable: rerun to continue).
DATASET_DB ?= duckdb:///./scratch/default.duckdb
dataset: install
	$(XAS) ingest builtin --dataset none --db $(DATASET_DB)
	$(XAS) dataset build --db $(DATASET_DB)
	$(XAS) dataset export --db $(DATASET_DB)

test-all:
	$(MAKE) test PYTEST_ARGS=""

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
