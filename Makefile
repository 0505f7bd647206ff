# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RUN ?= runs/demo
# The backend-neutral core under KERAS_BACKEND=jax, in a venv without TensorFlow.
JAX_VENV ?= .venv-jax
JAX_STAMP := $(JAX_VENV)/.installed-stamp
JAX_TESTS ?= tests/test_jax_backend.py tests/test_finetune.py tests/test_backbones.py \
	tests/test_explain.py tests/test_lr_finder.py tests/test_tta.py \
	--deselect tests/test_backbones.py::test_every_backbone_builds_small_and_partitions_into_blocks \
	--deselect tests/test_explain.py::test_every_backbone_family \
	tests/test_model.py::test_frozen_backbone_and_bn_stats_unchanged_by_fit_head_trains \
	tests/test_model.py::test_heads tests/test_model.py::test_errors \
	"tests/test_model.py::test_uint8_pixels_match_manual_preprocess_input[resnet50-resnet50]" \
	tests/test_model.py::test_weights_file_from_backbone_loads_bit_identical \
	tests/test_model.py::test_keras2_notop_h5_loads_bit_identical \
	tests/test_model.py::test_import_registers_custom_objects_and_keeps_tensorflow_parts_lazy \
	tests/test_inference_mode.py

# The oldest supported versions (setup.cfg's floor), for the core tests.
FLOOR_VENV ?= .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed-stamp
FLOOR_PINS ?= "tensorflow==2.18.*" "keras==3.8.*"
FLOOR_TESTS ?= tests/test_model.py tests/test_inference_mode.py tests/test_ensemble.py \
	tests/test_export.py

.PHONY: install test test-doctest test-fast test-jax test-floor demo data-samples bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(JAX_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(JAX_VENV)
	$(JAX_VENV)/bin/python -m pip install -q --upgrade pip
	$(JAX_VENV)/bin/python -m pip install -q "jax[cpu]" "keras>=3.8" numpy pillow h5py pytest pytest-xdist
	$(JAX_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(JAX_STAMP)

## make test-jax: the core tests on KERAS_BACKEND=jax with no TensorFlow installed (~3 min)
## (skipped, saying why, only when jax/keras cannot be installed)
test-jax:
	@if $(MAKE) --no-print-directory $(JAX_STAMP); then \
		echo "test-jax: KERAS_BACKEND=jax, $(JAX_VENV) (no TensorFlow)"; \
		KERAS_BACKEND=jax $(JAX_VENV)/bin/python -m pytest -n 2 --dist load -q $(JAX_TESTS) $(PYTEST_ARGS); \
	else \
		echo "test-jax: SKIPPED: installing jax and keras into $(JAX_VENV) failed (pip's error is above)"; \
	fi

$(FLOOR_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install -q $(FLOOR_PINS) numpy pillow matplotlib h5py \
		pytest pytest-xdist scipy
	$(FLOOR_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(FLOOR_STAMP)

## make test-floor: the core tests on the oldest supported TensorFlow/Keras (setup.cfg's floor)
test-floor: $(FLOOR_STAMP)
	@echo "test-floor: $$($(FLOOR_VENV)/bin/python -c 'import keras, tensorflow as tf; print("keras", keras.__version__, "tensorflow", tf.__version__)' 2>/dev/null)"
	$(FLOOR_VENV)/bin/python -m pytest -n 2 --dist loadfile -q $(FLOOR_TESTS) $(PYTEST_ARGS)

## make test: set up the venv and run the whole test suite (CPU, offline, ~30 min on 2 cores with venv set-up),
## after the core on JAX (test-jax) and on the oldest supported TensorFlow/Keras (test-floor),
## then the docstring examples (test-doctest)
test: test-jax test-floor $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)
	$(BIN)/python -m pytest -n 2 -q --doctest-modules tfx_transfer $(PYTEST_ARGS)

## make test-doctest: only the docstring examples of the package (~4 min on 2 shared cores)
test-doctest: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q --doctest-modules tfx_transfer $(PYTEST_ARGS)

## make test-fast: everything but the end-to-end tests marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow" $(PYTEST_ARGS)

## make demo: train, evaluate, export and predict on data_samples/ (offline: < 10 min on 2 CPU cores)
demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out $(RUN)

## make data-samples: regenerate data_samples/ (procedural images)
data-samples: $(STAMP)
	$(BIN)/python data_samples/make_samples.py

clean:
	rm -rf $(VENV) $(JAX_VENV) $(FLOOR_VENV) runs .pytest_cache build *.egg-info
