# The two commands a new user runs: `make demo` and `make test`.
# Each one creates .venv and installs what it needs on first use.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= ../shared/data/multi30k

.PHONY: install test demo bench multi30k clean

install: $(STAMP)

$(STAMP): setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) bench/train_throughput.py

# Train the tiny Transformer on Multi30k en->de for 60 minutes, then report BLEU.
MULTI30K_ARGS ?= --minutes 60 --mixed-precision --dropout 0.2 --warmup-steps 1000 --lr-scale 0.7 --average-last 5
multi30k: $(STAMP)
	$(PY) examples/train_multi30k.py --data-dir $(DATA_DIR) --run-dir runs/multi30k-en-de $(MULTI30K_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
