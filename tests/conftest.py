"""Shared test setup: tiny images, quiet TensorFlow, deterministic seeds."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Never try the network for ImageNet weights from the test suite.
os.environ.setdefault("TFX_TRANSFER_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The "tinycam" backbone fixture, for every test module.
from tests.tiny_backbone import tinycam  # noqa: E402,F401
