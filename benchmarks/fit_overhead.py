"""Overhead of ``fine_tune`` against the hand-written two-``compile`` Keras recipe.

Both do the same work on the same model, data and seed, without feature caching:

* recipe: ``compile(Adam(head_lr))``; ``fit(epochs=E)``; set the backbone container
  trainable and each layer of the unfrozen block trainable (BatchNormalization
  excluded), the rest not; ``compile(Adam(fine_tune_lr))``;
  ``fit(initial_epoch=E, epochs=2E)``;
* kit: ``fine_tune(model, (x, y), head_epochs=E, fine_tune_epochs=E,
  blocks=block, cache_features=False)``: one ``fit`` whose ``StagedUnfreeze``
  callback swaps the optimizer and rebuilds the train function at epoch E.

Figure: wall time recipe / kit (1.0 = no overhead; target >= 0.97, i.e. at most
3% slower). Runs alternate (recipe, kit, recipe, kit, ...) with ``--repeats``;
the best time of each is compared. Random uint8 images in memory.

Usage (from the repository root)::

    python benchmarks/fit_overhead.py                          # vgg16, 96 px, 128 images
    python benchmarks/fit_overhead.py --backbone resnet50 --image-size 64 --epochs 2 --repeats 3
    python benchmarks/fit_overhead.py --smoke           # seconds: mobilenet, 32 px, 16 images
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _smoke  # noqa: E402

HEAD_LR, FINE_TUNE_LR = 1e-3, 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per phase")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blocks", default=None, help="block (default: the backbone's default)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: a tiny backbone, 32 px, 16 images, 1 + 1 epochs, batch 8 (checks that it runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.image_size, args.images, args.epochs, args.batch_size = \
            _smoke.BACKBONE, 32, 16, 1, 8
    return args


def _setup(args):
    import keras
    import numpy as np

    import tfx_transfer as tt

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.image_size, args.image_size, 3), dtype=np.uint8)
    y = np.arange(args.images) % 5
    model = tt.build_transfer_model(args.backbone, 5, input_shape=(args.image_size,) * 2,
                                    weights=None, head="flatten")
    return model, x, y


def recipe(args, block: str) -> float:
    """The classic two-compile recipe, written with plain Keras."""
    import keras

    import tfx_transfer as tt

    model, x, y = _setup(args)
    base = tt.get_backbone_model(model)
    layers = {id(layer) for layer in tt.backbone_blocks(args.backbone, base)[block]}
    fit = dict(batch_size=args.batch_size, verbose=0)
    start = time.perf_counter()
    model.compile(keras.optimizers.Adam(HEAD_LR), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, **fit)
    base.trainable = True
    for layer in base.layers:
        layer.trainable = id(layer) in layers and not isinstance(
            layer, keras.layers.BatchNormalization)
    model.compile(keras.optimizers.Adam(FINE_TUNE_LR), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, initial_epoch=args.epochs, epochs=2 * args.epochs, **fit)
    return time.perf_counter() - start


def kit(args, block: str) -> float:
    import tfx_transfer as tt

    model, x, y = _setup(args)
    start = time.perf_counter()
    tt.fine_tune(model, (x, y), head_epochs=args.epochs, fine_tune_epochs=args.epochs,
                 blocks=block, head_lr=HEAD_LR, fine_tune_lr=FINE_TUNE_LR,
                 cache_features=False, batch_size=args.batch_size, verbose=0)
    return time.perf_counter() - start


@_smoke.eager_when_smoke
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.smoke:
        _smoke.register_backbone()
    import keras

    import tfx_transfer as tt

    block = args.blocks or tt.get_backbone(args.backbone).default_unfreeze[-1]
    print(f"fit overhead: {args.backbone}, {args.image_size} px, {args.images} images, batch "
          f"{args.batch_size}, {args.epochs}+{args.epochs} epochs, unfreeze {block!r}, backend "
          f"{keras.backend.backend()}, {os.cpu_count()} CPU cores")
    times: dict[str, list[float]] = {"recipe": [], "fine_tune": []}
    print(f"\n{'run':>4} {'recipe s':>10} {'fine_tune s':>12}")
    for i in range(1, args.repeats + 1):
        times["recipe"].append(recipe(args, block))
        times["fine_tune"].append(kit(args, block))
        print(f"{i:>4} {times['recipe'][-1]:>10.2f} {times['fine_tune'][-1]:>12.2f}")
    best_recipe, best_kit = min(times["recipe"]), min(times["fine_tune"])
    ratio = best_recipe / best_kit
    print(f"\nbest: recipe {best_recipe:.2f} s, fine_tune {best_kit:.2f} s; ratio recipe/fine_tune "
          f"{ratio:.3f} ({'meets' if ratio >= 0.97 else 'BELOW'} the 0.97 target)")


if __name__ == "__main__":
    main()
