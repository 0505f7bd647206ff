"""What the benchmarks' smoke modes (``--smoke``) share: the sample images and a tiny backbone.

A smoke run checks in seconds that a script runs end to end (``tests/test_benchmarks.py``
runs every one); its figures mean nothing. It reads ``data_samples/`` (procedural images
in the repository) or generated data, never ``../shared``, and trains
:data:`BACKBONE`, three convolution blocks registered with
:func:`tfx_transfer.register_backbone` like any user's backbone, instead of a
``keras.applications`` network (building and tracing those costs most of a smoke run).
The training scripts' ``main`` is wrapped in :func:`eager_when_smoke`: with ``--smoke``
their ``tf.function`` s run eagerly, which halves their smoke runs (tracing a training
step costs more than a smoke run's few steps); every call of the script still runs.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"
BACKBONE = "smoke_cnn"
IMAGE_SIZE = 32


def tiny_cnn(include_top: bool = False, weights: str | None = None,
             input_shape: tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 3)):
    """Conv -> BatchNorm -> ReLU, three times (BatchNorm: AdaBN needs statistics to adapt)."""
    import keras

    inputs = keras.Input(input_shape)
    x = inputs
    for block, (filters, strides) in enumerate(((8, 1), (16, 2), (16, 2)), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                name=f"b{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"b{block}_bn")(x)
        x = keras.layers.ReLU(name=f"b{block}_relu")(x)
    return keras.Model(inputs, x, name=BACKBONE)


def register_backbone() -> str:
    """Registers :func:`tiny_cnn` as ``"smoke_cnn"`` (blocks b1..b3, b3 unfrozen by default).

    Example:
        >>> import tfx_transfer as tt
        >>> tt.get_backbone(register_backbone()).default_unfreeze
        ('b3',)
    """
    import tfx_transfer as tt

    tt.register_backbone(tt.BackboneSpec(BACKBONE, tiny_cnn, "tf", IMAGE_SIZE, 16,
                                         blocks=(("b1", "^b1_"), ("b2", "^b2_"), ("b3", "^b3_"))),
                         overwrite=True)
    return BACKBONE


def samples(tmp: str | Path, train: int = 8, val: int = 4) -> Path:
    """A ``data_samples`` folder in ``tmp``: the first ``train`` / ``val`` images per class (symlinks).

    Fewer images, fewer steps: one batch of 32 per epoch instead of three.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = samples(tmp)
        ...     print(folder.name, len(list((folder / "train" / "circle").iterdir())))
        data_samples 8
    """
    out = Path(tmp) / SAMPLES.name
    for split, count in (("train", train), ("val", val)):
        for class_dir in sorted(p for p in (SAMPLES / split).iterdir() if p.is_dir()):
            (out / split / class_dir.name).mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:count]:
                (out / split / class_dir.name / path.name).symlink_to(path)
    return out


def eager_when_smoke(main):
    """``main(argv)`` with ``tf.config.run_functions_eagerly(True)`` when ``--smoke`` is in argv.

    A smoke run takes a step or two per phase, so tracing the training step (seconds per
    model, per phase) costs more than running it eagerly. Every kit and Keras call of the
    script still runs (a renamed argument still fails); graph-only behaviour is what the
    kit's own tests check. The previous setting comes back afterwards (the tests run the
    scripts in their own process).
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None):
        if "--smoke" not in (sys.argv[1:] if argv is None else argv):
            return main(argv)
        import warnings

        import tensorflow as tf

        before = tf.config.functions_run_eagerly()
        tf.config.run_functions_eagerly(True)
        try:
            with warnings.catch_warnings():  # tf.data's map functions are traced as always
                warnings.filterwarnings("ignore", message=".*does not apply to tf.data functions")
                # Keras warns on each eager call of a model whose one Input is named (the kit's
                # "pixels"); traced, it warned once per trace
                warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
                return main(argv)
        finally:
            tf.config.run_functions_eagerly(before)

    return wrapper
