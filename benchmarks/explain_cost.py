"""Cost of explaining a batch (Grad-CAM, ``tt.explain``) and of TTA against predicting it.

The same batch of random uint8 images goes through the same model three ways:

* predict: ``model.predict_on_batch`` (one forward pass);
* explain: ``tt.explain`` (a forward pass through the backbone, the head's gradient
  with respect to the feature map, the weighted sum, the resize to the input);
* TTA: ``tt.predict_tta`` (6 views: as is, mirrored, 4 shifts).

Each is run once to warm up, then ``--repeats`` rounds alternate the three (so a
load change on shared cores hits all three alike); the best time of each counts. Figure:
explain / predict and TTA / predict (how many predictions one explanation costs).
Weights are random (``weights=None``): the cost does not depend on their values.

Usage (from the repository root)::

    python benchmarks/explain_cost.py                                 # mobilenet, 160 px, batch 16
    python benchmarks/explain_cost.py --backbone resnet50 --image-size 224 --batch-size 32
    python benchmarks/explain_cost.py --smoke          # seconds: 32 px, batch 4, one round
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
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head", default="avg", choices=("flatten", "avg", "max"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: a tiny backbone, 32 px, batch 4, one round (checks that it runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.image_size, args.batch_size, args.repeats = _smoke.BACKBONE, 32, 4, 1
    return args


def best_times(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up (tracing, first allocation)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    import keras
    import numpy as np

    import tfx_transfer as tt

    if args.smoke:
        _smoke.register_backbone()
    model = tt.build_transfer_model(args.backbone, 2, input_shape=args.image_size, weights=None,
                                    head=args.head)
    images = np.random.default_rng(0).integers(
        0, 256, (args.batch_size, args.image_size, args.image_size, 3), dtype=np.uint8)
    best = best_times({"predict": lambda: model.predict_on_batch(images),
                       "explain": lambda: tt.explain(model, images),
                       "tta": lambda: tt.predict_tta(model, images)}, args.repeats)
    predict, explain, tta = best["predict"], best["explain"], best["tta"]
    print(f"backend {keras.backend.backend()}, {args.backbone}, {args.image_size} px, batch "
          f"{args.batch_size}, best of {args.repeats}")
    print(f"predict  {predict * 1000:8.1f} ms  ({args.batch_size / predict:6.1f} img/s)")
    print(f"explain  {explain * 1000:8.1f} ms  ({args.batch_size / explain:6.1f} img/s)  "
          f"explain / predict = {explain / predict:.2f}")
    print(f"TTA      {tta * 1000:8.1f} ms  ({args.batch_size / tta:6.1f} img/s)  "
          f"TTA / predict = {tta / predict:.2f}")


if __name__ == "__main__":
    main()
