"""Docs and docstring examples run their ``tf.function`` s eagerly (tests/test_docs.py, conftest.py).

The examples train for a step or two per phase at 32 px, so tracing each training, predict
and evaluation step costs more than running it (measured 2026-12-03: the doctests of
training/, runs/, models/ and adaptation/ cost 106.6 s of CPU eagerly against 139.8 traced).
Every call of an example still runs, with every argument checked and every printed value
compared; graph-only behaviour is what the kit's own tests check, as for the benchmarks'
``--smoke`` (benchmarks/_smoke.py). Exports still trace (SavedModel signatures are graphs).
"""

from __future__ import annotations

import contextlib
import warnings


def functions_run_eagerly() -> contextlib.ExitStack:
    """``tf.function`` s run eagerly until ``.close()`` (then as before), on Keras + TensorFlow.

    Example:
        >>> import tensorflow as tf
        >>> with functions_run_eagerly():
        ...     inside = tf.config.functions_run_eagerly()
        >>> inside, tf.config.functions_run_eagerly()
        (True, False)
    """
    import keras

    stack = contextlib.ExitStack()
    if keras.backend.backend() != "tensorflow":
        return stack
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    stack.callback(tf.config.run_functions_eagerly, before)
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message=".*does not apply to tf.data functions")
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
    return stack
