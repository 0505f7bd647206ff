"""The docs' Python blocks (tests/test_docs.py) and the docstring examples (conftest.py) run
their ``tf.function`` s eagerly.

The blocks train for a step or two per phase at 32 px, so tracing each training, predict
and evaluation step costs more than running it (test_docs.py: 67.3 -> 42.8 s of CPU,
2026-12-03). Every call of a block still runs, with every argument checked; graph-only
behaviour is what the kit's own tests check, as for the benchmarks' ``--smoke``
(benchmarks/_smoke.py). Exports still trace (SavedModel signatures are graphs)."""

from __future__ import annotations

import contextlib
import warnings


def functions_run_eagerly() -> contextlib.ExitStack:
    """``tf.function`` s run eagerly until ``.close()`` (then as before), on Keras + TensorFlow.

    Example:
        >>> import tensorflow as tf
        >>> before = tf.config.functions_run_eagerly()
        >>> with functions_run_eagerly():
        ...     inside = tf.config.functions_run_eagerly()
        >>> inside, tf.config.functions_run_eagerly() == before
        (True, True)
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
