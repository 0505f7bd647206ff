"""Doctest setup for ``pytest --doctest-modules tfx_transfer`` (tests/ has its own conftest).

Docstring examples run offline, quietly, from a throwaway working directory (so an
example never writes into the repository) with fixed seeds, and with their ``tf.function`` s
run eagerly, as the docs' blocks do (tests/eager.py): an example trains for a step or two, so
tracing costs more than running (all 358 examples, 2 workers: 218.8 -> 174.8 s of CPU,
2026-12-03). Graph-mode behaviour is what tests/ checks.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")
# Never try the network for ImageNet weights from a docstring example.
os.environ.setdefault("TFX_TRANSFER_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_sandbox(request):
    """For docstring examples only: a temp folder (and file cache), seeded Keras, eager functions."""
    if type(request.node).__name__ != "DoctestItem":
        yield
        return
    import keras

    from tests.eager import functions_run_eagerly

    tmp_path = request.getfixturevalue("tmp_path")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFX_TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    keras.utils.set_random_seed(0)
    from tfx_transfer.models import backbones

    registry = dict(backbones._REGISTRY)
    with functions_run_eagerly():
        yield
    # What an example may change globally goes back (register_backbone, set_precision).
    backbones._REGISTRY.clear()
    backbones._REGISTRY.update(registry)
    keras.config.set_dtype_policy("float32")
