# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RUN ?= runs/demo
PYTEST_N ?= 2
# The whole suite: every test file and the package's docstring examples in one pytest run,
# 2 workers stealing work from each other (no worker waits on the slowest file).
SUITE := tests tfx_transfer --doctest-modules
# Under CI=true (.ci/run) nothing may skip silently: a skipped test fails (tests/conftest.py),
# and so does a venv that cannot be built.
CI ?=
# Bytecode is compiled when a module is first imported and kept (__pycache__), also where the
# environment says not to write it: the tests start ~30 Python processes, and compiling every
# file of the three venvs up front (uv --compile-bytecode) cost about 175 s of CPU for the ~35% of
# them that are ever imported (measured 2026-12-03).
unexport PYTHONDONTWRITEBYTECODE
# JAX (make test-jax, and the suite's JAX subprocesses) compiles every program with XLA, and the
# tests' tiny programs cost far more to compile than to run: LLVM's optimisation level 0 compiles
# them about 15x faster (two jax.random.uniform initialisers: 9.6 -> 0.6 s of CPU), and
# test_explain.py + test_lr_finder.py on JAX cost 32 s of CPU instead of 47 (2026-12-03).
# Only the tests' compiler settings; what runs and what is checked are the same.
XLA_OPT0 := --xla_backend_optimization_level=0
export XLA_FLAGS := $(strip $(filter-out $(XLA_OPT0),$(XLA_FLAGS)) $(XLA_OPT0))

# The backend-neutral core under KERAS_BACKEND=jax, in a venv without TensorFlow: whole files, and
# the backend-dependent tests of test_model.py. Deselected (the main suite runs them): the
# real-backbone family sweep and bookkeeping that no backend changes (counted look-ups,
# trainable flags); TensorFlow-only tests skip themselves.
JAX_VENV ?= .venv-jax
JAX_STAMP := $(JAX_VENV)/.installed-stamp
JAX_TESTS ?= tests/test_jax_backend.py tests/test_finetune.py tests/test_backbones.py \
	tests/test_benchmarks.py::test_gpu_throughput \
	tests/test_explain.py tests/test_lr_finder.py tests/test_tta.py tests/test_inference_mode.py \
	tests/test_spatial_head.py \
	tests/test_model.py::test_frozen_backbone_and_bn_stats_unchanged_by_fit_head_trains \
	tests/test_model.py::test_heads tests/test_model.py::test_errors \
	tests/test_model.py::test_uint8_pixels_match_manual_preprocess_input \
	tests/test_model.py::test_weights_file_from_backbone_loads_bit_identical \
	tests/test_model.py::test_keras2_notop_h5_loads_bit_identical \
	tests/test_model.py::test_import_registers_custom_objects_and_keeps_tensorflow_parts_lazy \
	--deselect tests/test_backbones.py::test_family_blocks_inference_mode_and_gradcam \
	--deselect tests/test_finetune.py::test_fine_tune_finds_the_model_parts_once \
	--deselect tests/test_finetune.py::test_unfreeze_keeps_batchnorm_frozen_unless_asked

# The oldest supported versions (setup.cfg's floor): the model, the training path (StagedUnfreeze,
# fine_tune resume, find_lr, data, augmentation), export, and one tiny train() killed and resumed.
# Left out here (the main suite runs them; nothing in them depends on the versions): the v0.1 .keras
# file (written by Keras 3.15, which Keras 3.8 cannot read), the ensemble, bookkeeping (counted
# look-ups, lazy imports) and saved_model_cli's listing.
FLOOR_VENV ?= .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed-stamp
FLOOR_PINS ?= "tensorflow==2.18.*" "keras==3.8.*"
FLOOR_TESTS ?= tests/test_model.py tests/test_inference_mode.py \
	tests/test_export.py tests/test_finetune.py tests/test_lr_finder.py tests/test_data.py \
	tests/test_augment.py \
	tests/test_core_promises.py::test_a_killed_run_resumes_from_its_last_epoch_and_serves_its_best_model \
	--deselect tests/test_model.py::test_legacy_v0_1_file_loads_predicts_and_knows_its_parts \
	--deselect tests/test_model.py::test_import_registers_custom_objects_and_keeps_tensorflow_parts_lazy \
	--deselect tests/test_finetune.py::test_fine_tune_finds_the_model_parts_once \
	--deselect tests/test_export.py::test_saved_model_cli_lists_signatures_with_dtypes_and_shapes

.PHONY: install lint venvs test test-suite test-doctest test-fast test-jax test-floor demo data-samples \
	bench clean

# A venv and its packages: uv installs them (several times faster than pip, packages fetched in
# parallel), hard-linked from its cache (TensorFlow 2.18 from a warm cache: 3.8 s against 10.2 s
# copied; uv copies by itself where the cache is on another file system); pip does where uv
# cannot be installed, and says so.
# NEW_VENV dir; then VENV_INSTALL dir args...
NEW_VENV = $(PYTHON) -m venv $(1) && \
	{ $(1)/bin/python -m pip install -q uv 2>/dev/null || \
	  echo "$(1): uv could not be installed; pip installs the packages (slower)"; }
VENV_INSTALL = if [ -x $(1)/bin/uv ]; then \
	  $(1)/bin/uv pip install -q --python $(1)/bin/python $(2); \
	else $(1)/bin/python -m pip install -q $(2); fi

$(STAMP): setup.cfg pyproject.toml
	$(call NEW_VENV,$(VENV))
	$(call VENV_INSTALL,$(VENV),-e ".[dev]")
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -c "import tensorflow, keras, tfx_transfer"  # the install imports (bytecode compiled once, for every test process)
	touch $(STAMP)

install: $(STAMP)

$(JAX_STAMP): setup.cfg pyproject.toml
	$(call NEW_VENV,$(JAX_VENV))
	$(call VENV_INSTALL,$(JAX_VENV),"jax[cpu]" "keras>=3.8" numpy pillow h5py pytest pytest-xdist)
	$(call VENV_INSTALL,$(JAX_VENV),--no-deps -e .)
	touch $(JAX_STAMP)

$(FLOOR_STAMP): setup.cfg pyproject.toml
	$(call NEW_VENV,$(FLOOR_VENV))
	$(call VENV_INSTALL,$(FLOOR_VENV),$(FLOOR_PINS) numpy pillow matplotlib h5py pytest pytest-xdist scipy)
	$(call VENV_INSTALL,$(FLOOR_VENV),--no-deps -e .)
	touch $(FLOOR_STAMP)

## make venvs: the three venvs, built at the same time (each target below rebuilds its own if missing)
venvs:
	@$(MAKE) --no-print-directory -j3 -k $(STAMP) $(JAX_STAMP) $(FLOOR_STAMP) || \
		echo "venvs: one failed to build (pip's error is above); its tests will say so"

## make test-jax: the core tests on KERAS_BACKEND=jax with no TensorFlow installed (2-4 min alongside the suite)
## (skipped, saying why, only when jax/keras cannot be installed and CI is not true). JAX's compilation
## cache, in a temporary folder for this run only: the tests build the same tiny models again and again,
## and XLA compiles each identical program once instead of per model (half the CPU time of test_finetune.py)
test-jax:
	@if ! $(MAKE) --no-print-directory $(JAX_STAMP); then \
		if [ "$(CI)" = true ]; then \
			echo "test-jax: FAILED: installing jax and keras into $(JAX_VENV) failed (pip's error is above; CI=true: nothing may be skipped)"; \
			exit 1; \
		fi; \
		echo "test-jax: SKIPPED: installing jax and keras into $(JAX_VENV) failed (pip's error is above)"; \
	else \
		echo "test-jax: KERAS_BACKEND=jax, $(JAX_VENV) (no TensorFlow)"; \
		cache=$$(mktemp -d); \
		KERAS_BACKEND=jax JAX_COMPILATION_CACHE_DIR=$$cache \
			JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
			$(JAX_VENV)/bin/python -m pytest -n $(PYTEST_N) --dist worksteal -q \
			-p no:cacheprovider $(JAX_TESTS) $(PYTEST_ARGS); \
		status=$$?; rm -rf "$$cache"; exit $$status; \
	fi

## make test-floor: the core and the training path on the oldest supported TensorFlow/Keras (2-4 min alongside the suite)
test-floor: $(FLOOR_STAMP)
	@echo "test-floor: $$($(FLOOR_VENV)/bin/python -c 'import keras, tensorflow as tf; print("keras", keras.__version__, "tensorflow", tf.__version__)' 2>/dev/null)"
	$(FLOOR_VENV)/bin/python -m pytest -n $(PYTEST_N) --dist worksteal -q -p no:cacheprovider \
		$(FLOOR_TESTS) $(PYTEST_ARGS)

## make test-suite: every test and docstring example on the latest TensorFlow/Keras
test-suite: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_N) --dist worksteal -q $(SUITE) $(PYTEST_ARGS)

## make test: the whole suite on the latest TensorFlow/Keras and, alongside it, the core on JAX and on
## the floor, one process each; each venv is built (when missing) by the line of work that needs it, so
## the suite starts as soon as .venv is ready; the suite has 3 workers, so that the cores stay busy while one
## waits on a subprocess or a shared fixture (CPU, offline; fresh clone, 2 cores, nothing else running, cold uv
## cache: 15.3 min on 2026-12-03 08:25 before the cuts; 7.2 to 11.15 min the same afternoon after them (806 to
## 1,304 s of CPU: this machine's speed varies 2-3x), CI: 519 s; 2026-12-03 16:14 with eager docstring
## examples: 10.7 min, 1,247 s of CPU, in a slower phase of this machine)
test:
	@side=$$(mktemp); \
	( $(MAKE) --no-print-directory -k -j2 $(JAX_STAMP) $(FLOOR_STAMP) >"$$side" 2>&1; \
	  $(MAKE) --no-print-directory test-jax test-floor PYTEST_N=0 >>"$$side" 2>&1; \
	  echo "exit status $$?" >>"$$side" ) & \
	status=0; $(MAKE) --no-print-directory lint test-suite PYTEST_N=3 || status=$$?; \
	wait; echo "---- make test-jax test-floor (ran alongside) ----"; cat "$$side"; \
	tail -n 1 "$$side" | grep -qx "exit status 0" || status=1; rm -f "$$side"; \
	exit $$status

## make lint: ruff (lint rules and import order from pyproject.toml); part of make test
lint: $(STAMP)
	$(BIN)/ruff check .

## make test-doctest: only the docstring examples of the package
test-doctest: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_N) --dist worksteal -q --doctest-modules tfx_transfer $(PYTEST_ARGS)

## make test-fast: everything but the end-to-end tests marked slow (the edit-test loop: 2.9 min, 2026-12-03)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_N) --dist worksteal -q -m "not slow" tests $(PYTEST_ARGS)

## make demo: train, evaluate, export and predict on data_samples/ (offline, 2 CPU cores: about 1.5 min)
demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out $(RUN)

## make data-samples: regenerate data_samples/ (procedural images)
data-samples: $(STAMP)
	$(BIN)/python data_samples/make_samples.py

clean:
	rm -rf $(VENV) $(JAX_VENV) $(FLOOR_VENV) runs .pytest_cache build *.egg-info
