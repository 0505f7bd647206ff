"""Phase-1 (head-only) epoch time: cached backbone features vs a plain frozen-base ``fit``.

Same model, data and head both ways, through the real code path:
``fine_tune(model, (x, y), head_epochs=E, fine_tune_epochs=0, cache_features=...)``.

* plain (``cache_features=False``): every epoch runs the frozen backbone forward
  over every image, then trains the head;
* cached (``cache_features=True``): the backbone runs once over the images
  (the one-off "extract" time, printed separately), then each epoch trains the
  head on the stored features.

The figure is the per-epoch ratio plain / cached, averaged over the epochs after
the first (the first includes tracing/compilation). Target: at least 10x.
The images are random uint8 pixels in memory (timing does not depend on content).

Usage (from the repository root)::

    python benchmarks/feature_cache.py                          # vgg16, 128 px, 512 images
    python benchmarks/feature_cache.py --backbone resnet50 --image-size 96 --images 256 --epochs 4
    python benchmarks/feature_cache.py --smoke          # seconds: mobilenet, 32 px, 16 images
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4, help="head epochs (at least 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head", default="flatten", choices=("flatten", "avg", "max"))
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: a tiny backbone, 32 px, 16 images, 2 epochs, batch 8 (checks that it runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.image_size, args.images, args.epochs, args.batch_size = \
            _smoke.BACKBONE, 32, 16, 2, 8
    return args


def run(args: argparse.Namespace, cache: bool) -> tuple[list[float], float]:
    """(per-epoch seconds, seconds outside the epochs: feature extraction when cached)."""
    import keras
    import numpy as np

    import tfx_transfer as tt

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.image_size, args.image_size, 3), dtype=np.uint8)
    y = np.arange(args.images) % 5
    model = tt.build_transfer_model(args.backbone, 5, input_shape=(args.image_size,) * 2,
                                    weights=None, head=args.head)
    timer = EpochTimer()
    start = time.perf_counter()
    tt.fine_tune(model, (x, y), head_epochs=args.epochs, fine_tune_epochs=0,
                 cache_features=cache, batch_size=args.batch_size, callbacks=[timer], verbose=0)
    total = time.perf_counter() - start
    return timer.times, total - sum(timer.times)


@_smoke.eager_when_smoke
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.smoke:
        _smoke.register_backbone()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (the first epoch includes compilation).")
    import keras

    print(f"feature cache: {args.backbone}, {args.image_size} px, {args.images} images, "
          f"batch {args.batch_size}, head {args.head!r}, {args.epochs} head epochs, "
          f"backend {keras.backend.backend()}, {os.cpu_count()} CPU cores")
    plain, plain_other = run(args, cache=False)
    cached, extract = run(args, cache=True)
    print(f"\n{'epoch':>5} {'plain s':>10} {'cached s':>10} {'ratio':>8}")
    for i, (p, c) in enumerate(zip(plain, cached), start=1):
        print(f"{i:>5} {p:>10.3f} {c:>10.4f} {p / c:>7.1f}x")
    later_plain = sum(plain[1:]) / len(plain[1:])
    later_cached = sum(cached[1:]) / len(cached[1:])
    ratio = later_plain / later_cached
    print(f"\none-off feature extraction (cached run, outside the epochs): {extract:.2f} s "
          f"(plain run outside the epochs: {plain_other:.2f} s)")
    print(f"totals: plain {sum(plain) + plain_other:.2f} s, cached {sum(cached) + extract:.2f} s")
    print(f"per-epoch speed-up after the first epoch: {ratio:.1f}x "
          f"({'meets' if ratio >= 10 else 'BELOW'} the 10x target)")


if __name__ == "__main__":
    main()
