"""Speed and scale: mixed precision, XLA, and one or many devices.

Three knobs, all ordinary Keras:

* :func:`set_precision` sets Keras's global dtype policy (``"mixed_float16"`` or
  ``"mixed_bfloat16"``). Call it *before* building the model. The model's output
  layer stays float32, and ``model.compile`` wraps the optimizer in a
  ``LossScaleOptimizer`` by itself under ``"mixed_float16"``.
* XLA: ``model.compile(..., jit_compile=True)``. On TensorFlow Keras's default
  (``"auto"``) compiles on GPUs but not on CPUs nor under a ``tf.distribute``
  strategy; the JAX backend always compiles.
* :func:`get_strategy` returns the backend's engine for several devices:
  ``tf.distribute.MirroredStrategy`` (the GPUs of one machine),
  ``tf.distribute.MultiWorkerMirroredStrategy`` (several machines, ``TF_CONFIG``)
  or, on the JAX backend, ``keras.distribution.DataParallel``.

Build the model, and compile or :func:`tfx_transfer.fine_tune` it (the optimizer
is created there), inside :func:`strategy_scope`. Feed batches of the *global* size,
:func:`scaled_batch_size` (per-replica size x replicas): Keras splits each batch
across the replicas and averages the gradients, so the training math is that of
one device with the global batch (the tests check the weights match).
:class:`tfx_transfer.StagedUnfreeze` builds its new optimizer in the model's scope
by itself. Under a ``tf.distribute`` strategy ``fine_tune`` does not cache
features (``predict`` would return per-replica shards).

Example:
    >>> import numpy as np, tfx_transfer as tt
    >>> from tfx_transfer.training.distribute import scaled_batch_size, strategy_scope
    >>> strategy = tt.get_strategy("mirrored", devices=["/cpu:0"])  # every GPU: devices=None
    >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
    >>> with strategy_scope(strategy):
    ...     model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
    ...                                     head="avg")
    ...     history = tt.fine_tune(model, (x, y), head_epochs=1, fine_tune_epochs=0,
    ...                            batch_size=scaled_batch_size(2, strategy), verbose=0)
    >>> len(history.history["loss"])
    1
    >>> # tf.data: load_image_folder(..., batch_size=scaled_batch_size(32, strategy))
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# dtypes TensorFlow's collective all-reduce (MultiWorkerMirroredStrategy) can reduce
_COLLECTIVE_DTYPES = ("bfloat16", "float16", "float32", "float64", "int32", "int64")
STRATEGIES = ("default", "mirrored", "multiworker", "data_parallel")
_TF_STRATEGIES = ("mirrored", "multiworker")


def set_precision(policy: str | None = None) -> str:
    """Set Keras's global dtype policy; returns the policy name now in force.

    ``None`` or ``"float32"`` restores full precision. Mixed policies compute in
    float16/bfloat16 and keep variables in float32. Call this before building the
    model: a layer takes the global policy when it is created. The model's
    ``"predictions"`` layer is float32 under every policy (a stable softmax, float32
    exports). Under ``"mixed_float16"`` ``model.compile`` wraps the optimizer in a
    ``keras.optimizers.LossScaleOptimizer``; bfloat16 needs no loss scaling.

    Example:
        >>> set_precision("mixed_bfloat16")
        'mixed_bfloat16'
        >>> set_precision(None)
        'float32'
    """
    name = "float32" if policy is None else str(policy).strip().lower()
    if name not in PRECISIONS:
        raise ValueError(
            f"precision={policy!r} is not one of {PRECISIONS} (or None for float32). "
            "Use 'mixed_bfloat16' on TPUs, Ampere/Hopper GPUs and CPUs, 'mixed_float16' "
            "on older GPUs."
        )
    keras.mixed_precision.set_global_policy(name)
    return name


def _normalize(name: str | None) -> str:
    key = "default" if name is None else str(name).strip().lower().replace("-", "_")
    key = {"multi_worker": "multiworker", "dataparallel": "data_parallel"}.get(key, key)
    if key not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is not one of {STRATEGIES} (or None).")
    return key


def _check_backend(key: str, backend: str) -> None:
    if key in _TF_STRATEGIES and backend != "tensorflow":
        raise ValueError(
            f"strategy={key!r} is a tf.distribute strategy and needs KERAS_BACKEND=tensorflow "
            f"(the backend is {backend!r}); on the jax backend use strategy='data_parallel'."
        )
    if key == "data_parallel" and backend != "jax":
        raise ValueError(
            f"strategy='data_parallel' is keras.distribution.DataParallel, which needs "
            f"KERAS_BACKEND=jax (the backend is {backend!r}); on tensorflow use "
            "strategy='mirrored' (one machine) or 'multiworker' (several)."
        )


def _check_tf_config() -> None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "strategy='multiworker' needs the TF_CONFIG environment variable on every "
            "worker, e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
            "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}'."
        )
    try:
        config = json.loads(raw)
        config["cluster"]["worker"], config["task"]["index"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"TF_CONFIG={raw!r} is not a JSON object with 'cluster': {{'worker': [...]}} and "
            f"'task': {{'type': 'worker', 'index': i}} ({exc})."
        ) from exc


@functools.cache
def _multiworker_class() -> type:
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce`` takes any nest.

        Keras 3's ``fit`` fails on the plain strategy (keras-team/keras#20585): it
        starts with ``strategy.reduce("MEAN", first_batch)`` over the whole ``(x, y)``
        batch (only to read its shapes), but the collective strategy reduces neither
        nests nor uint8 pixels ("Attempt to convert a value (PerReplica...)"); and it
        averages the scalar per-step logs with ``axis=0`` ("Invalid reduction
        dimension 0"). Here ``reduce`` maps over the nest, reduces dtypes the
        collectives lack (uint8, bool, ...) in float32, cast back, and reduces a
        scalar across the replicas only. Everything else is TensorFlow's.
        """

        def reduce(self, reduce_op: Any, value: Any, axis: int | None = None) -> Any:
            parent = super()

            def one(v: Any) -> Any:
                local = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
                local = tf.convert_to_tensor(local)
                # a scalar has no batch axis: reduce it across the replicas only
                v_axis = None if local.shape.rank == 0 else axis
                if local.dtype.name in _COLLECTIVE_DTYPES:
                    return parent.reduce(reduce_op, v, v_axis)
                as_float = self.run(lambda t: tf.cast(t, tf.float32), args=(v,))
                return tf.cast(parent.reduce(reduce_op, as_float, v_axis), local.dtype)

            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy


def get_strategy(name: str | None = None, devices: Sequence[Any] | None = None) -> Any:
    """The distribution engine of the current Keras backend, by name.

    * ``None`` / ``"default"``: one device. On tensorflow the default
      ``tf.distribute`` strategy; on other backends ``None`` (nothing to set up).
    * ``"mirrored"`` (tensorflow): ``tf.distribute.MirroredStrategy(devices)``,
      synchronous data parallelism over the GPUs of this machine (all of them when
      ``devices`` is None).
    * ``"multiworker"`` (tensorflow): ``tf.distribute.MultiWorkerMirroredStrategy``
      over the workers listed in the ``TF_CONFIG`` environment variable (a subclass
      whose ``reduce`` works around a Keras 3 bug, see ``_multiworker_class``).
      Create it at the start of the program, before any other TensorFlow work, on
      every worker; every worker runs the same code, the chief (worker 0) keeps
      the checkpoints and exports.
    * ``"data_parallel"`` (jax): ``keras.distribution.DataParallel(devices)`` (all
      local devices when None), installed globally with
      ``keras.distribution.set_distribution``: every later model's variables are
      replicated and each ``fit`` batch is split across the devices. For several
      hosts, call ``keras.distribution.initialize()`` first.

    Build and compile the model in :func:`strategy_scope` and feed the global batch
    size :func:`scaled_batch_size`.

    Example:
        >>> strategy = get_strategy("mirrored", devices=["/cpu:0"])  # all GPUs: devices=None
        >>> num_replicas(strategy)
        1
    """
    key = _normalize(name)
    backend = keras.backend.backend()
    _check_backend(key, backend)
    if key == "default":
        if backend != "tensorflow":
            return None
        import tensorflow as tf

        return tf.distribute.get_strategy()
    if key == "data_parallel":
        distribution = keras.distribution.DataParallel(
            devices=list(devices) if devices else None)
        keras.distribution.set_distribution(distribution)
        return distribution
    import tensorflow as tf

    if key == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if devices:
        raise ValueError(
            f"devices={devices!r}: strategy='multiworker' uses every GPU (or the CPU) of each "
            "worker in TF_CONFIG; choose the devices with CUDA_VISIBLE_DEVICES instead."
        )
    _check_tf_config()
    return _multiworker_class()()


def num_replicas(strategy: Any) -> int:
    """How many model replicas ``strategy`` trains in sync (1 for ``None``).

    Example:
        >>> num_replicas(None)
        1
    """
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    if hasattr(strategy, "device_mesh"):
        shape = strategy.device_mesh.shape
        batch_axis = strategy.device_mesh.axis_names.index(strategy.batch_dim_name)
        return int(shape[batch_axis])
    raise TypeError(
        f"{strategy!r} is neither a tf.distribute.Strategy nor a keras.distribution "
        "Distribution; pass what get_strategy() returns."
    )


def scaled_batch_size(per_replica: int, strategy: Any) -> int:
    """The global batch size: ``per_replica`` x the replicas of ``strategy``.

    Batch datasets (or pass ``batch_size=`` to ``fit``) with this size; each
    replica then sees ``per_replica`` examples per step. Scale the learning rate
    with the global batch if you change it (e.g. linearly, with a warm-up).

    Example:
        >>> scaled_batch_size(32, None)
        32
    """
    if not isinstance(per_replica, int) or isinstance(per_replica, bool) or per_replica < 1:
        raise ValueError(f"per_replica={per_replica!r} must be a positive integer batch size.")
    return per_replica * num_replicas(strategy)


@contextlib.contextmanager
def strategy_scope(strategy: Any) -> Iterator[Any]:
    """Enter ``strategy``'s scope (nothing for ``None``); yields the strategy.

    Create the model, and compile it (the optimizer's variables), inside. On
    tensorflow, ``fit``, ``evaluate`` and :class:`tfx_transfer.StagedUnfreeze` then
    find the strategy on the model by themselves.

    Example:
        >>> with strategy_scope(None) as strategy:
        ...     strategy is None
        True
    """
    if strategy is None:
        yield None
        return
    with strategy.scope():
        yield strategy
