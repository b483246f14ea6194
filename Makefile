# The two commands a new user runs: `make demo` and `make test`.
# Each one creates .venv and installs what it needs on first use.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= ../shared/data/multi30k
# Test processes (pytest-xdist); one test file stays in one process, so module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: install test lint demo bench multi30k multi30k-cased export serve serve-docker clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# PyTorch for its smoke test (tests/backends/test_torch_backend.py): the CPU build, which lies on this
# machine's disk (PyPI's plain `torch` is a CUDA build of several GB). Elsewhere: TORCH="torch --index-url ...".
TORCH ?= torch==2.13.0
TORCH_STAMP := $(VENV)/.torch-installed
$(TORCH_STAMP): $(STAMP)
	$(PY) -m pip install -q $(TORCH)
	touch $(TORCH_STAMP)

# The layer, model and training tests that run again on the JAX backend (the rest need TensorFlow's).
# Left out there: the loss-scaling resume (a minute of float16, which JAX's CPU emulates; the logic is
# Keras's LossScaleOptimizer, the same on both, and runs on TensorFlow's).
JAX_TESTS ?= tests/layers tests/models tests/training/test_fit.py tests/training/test_resume.py \
	tests/training/test_losses_and_schedules.py tests/data/test_arrays.py \
	--deselect tests/training/test_resume.py::test_resume_counts_batches_not_optimizer_steps_under_loss_scaling

# The tests, the docs' Python blocks (tests/test_docs.py) and the package's docstring examples, on
# TensorFlow's backend; then the layer, model and training tests on JAX's.
test: $(STAMP) $(TORCH_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 --doctest-modules tests keras_transformer
	KERAS_BACKEND=jax JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10 $(JAX_TESTS)

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) bench/train_throughput.py

# Train the tiny Transformer on Multi30k en->de for 60 minutes (keras_transformer/recipes/multi30k_en_de.json),
# then report BLEU. Extra flags override the recipe: make multi30k MULTI30K_ARGS="--lr-scale 1.3".
MULTI30K_ARGS ?=
MULTI30K_RECIPE ?= keras_transformer/recipes/multi30k_en_de.json
multi30k: $(STAMP)
	$(PY) examples/train_multi30k.py --data-dir $(DATA_DIR) --run-dir runs/multi30k-en-de --recipe $(MULTI30K_RECIPE) $(MULTI30K_ARGS)

# The same recipe on the raw, true-cased text: the model writes German with its capitals (the export default).
multi30k-cased: $(STAMP)
	$(PY) examples/train_multi30k.py --data-dir $(DATA_DIR) --run-dir runs/multi30k-en-de-cased --recipe $(MULTI30K_RECIPE) --cased $(MULTI30K_ARGS)

# Export the Multi30k model, then serve it: our server, or the real TensorFlow Serving in Docker.
MODEL_DIR ?= runs/multi30k-en-de-cased
EXPORT_DIR ?= models/transformer
export: $(STAMP)
	$(PY) -m keras_transformer.export export --model $(MODEL_DIR)/model.keras --vocab $(MODEL_DIR)/vocab.txt --base-dir $(EXPORT_DIR)
	$(PY) -m keras_transformer.export check $$(ls -d $(EXPORT_DIR)/* | sort -t/ -k3 -n | tail -1)

serve: $(STAMP)
	$(PY) -m serving.server --port=8500 --rest_api_port=8501 --model_name=transformer \
		--model_base_path=$(abspath $(EXPORT_DIR)) --enable_batching --batching_parameters_file=serving/batching.config

TF_SERVING_IMAGE ?= tensorflow/serving:latest
serve-docker:
	docker run --rm -p 8500:8500 -p 8501:8501 \
		-v $(abspath $(EXPORT_DIR)):/models/transformer \
		-v $(abspath serving):/config \
		$(TF_SERVING_IMAGE) \
		--model_config_file=/config/models.config \
		--enable_batching --batching_parameters_file=/config/batching.config

clean:
	rm -rf $(VENV) build *.egg-info
