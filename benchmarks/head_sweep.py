"""Head defaults by measurement: head type, dropout, label smoothing, learning rate, epochs.

The backbone (real ImageNet MobileNet v1 weights from a file) is frozen, so its
feature maps are computed once per image and every head variant trains on them in
seconds -- which makes repeated random splits affordable on 2 CPU cores. Each
variant is trained on ``--splits`` stratified random splits of the pooled images
(hymenoptera: train+val pooled, re-split 245/153 per class ratio; a folder of class
folders: ``--per-class`` images per class, split TRAIN/VAL), for ``--epochs``
epochs; reported per variant, as mean over splits:

* ``best``: validation accuracy at the epoch of lowest validation loss (what
  ``train``'s best checkpoint keeps);
* ``@5``, ``@10``, ``@20``, ``@E``: validation accuracy after that many epochs;
* ``best epoch``: the mean epoch of lowest validation loss (guides ``head_epochs``).

No augmentation (features are computed once); the fine-tuning phase is not part of
this sweep (see ``docs/accuracy.md``).

Usage::

    python benchmarks/head_sweep.py --data ../shared/datasets/hymenoptera --image-size 160
    python benchmarks/head_sweep.py --data ../shared/datasets/caltech101 --image-size 128 --per-class 10
    python benchmarks/head_sweep.py --smoke     # seconds: data_samples/, 32 px, random weights
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _smoke  # noqa: E402
from benchmarks._sample import class_sample  # noqa: E402

SHARED = ROOT / ".." / "shared"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"

# name: (head, dropout, label_smoothing, lr)
VARIANTS = {
    "flatten-256, dropout 0.5 (old default)": ("flatten", 0.5, 0.0, 1e-3),
    "avg, dropout 0.2": ("avg", 0.2, 0.0, 1e-3),
    "avg, dropout 0.5": ("avg", 0.5, 0.0, 1e-3),
    "avg, dropout 0.2, label smoothing 0.1": ("avg", 0.2, 0.1, 1e-3),
    "avg, dropout 0.2, lr 3e-3": ("avg", 0.2, 0.0, 3e-3),
    "max, dropout 0.2": ("max", 0.2, 0.0, 1e-3),
}


def features(data: Path, size: int, per_class: int | None, weights: Path | None, backbone: str):
    """Backbone feature maps and labels of every image used (train and val pooled)."""
    import numpy as np

    import tfx_transfer as tt
    from tfx_transfer.models.transfer_model import get_backbone_model

    if per_class is not None:  # a fixed sample of per_class images per class (seed 0)
        with class_sample(data, per_class) as sample:
            return features(sample, size, None, weights, backbone)
    folder = tt.load_image_folder(data, image_size=size, batch_size=32, shuffle=False)
    model = tt.build_transfer_model(backbone, folder.num_classes, input_shape=(size, size, 3),
                                    weights=weights and str(weights), head="avg")
    backbone_model = get_backbone_model(model)
    preprocess = model.get_layer("preprocess")
    xs, ys = [], []
    for split in (folder.train, folder.validation):
        if split is None:
            continue
        for images, labels in split:
            xs.append(np.asarray(backbone_model(preprocess(images), training=False)))
            ys.append(np.asarray(labels))
    return np.concatenate(xs), np.concatenate(ys), folder.num_classes


def split(y, val_fraction: float, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(len(idx) * val_fraction))
        val += list(idx[:n_val])
        train += list(idx[n_val:])
    return np.array(train), np.array(val)


def run_variant(x, y, num_classes, tr, va, head, dropout, smoothing, lr, epochs, seed):
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    layers = [keras.Input(x.shape[1:])]
    if head == "flatten":
        layers += [keras.layers.Flatten(), keras.layers.Dense(256, activation="relu")]
    else:
        layers.append(keras.layers.GlobalAveragePooling2D() if head == "avg"
                      else keras.layers.GlobalMaxPooling2D())
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    model = keras.Sequential(layers)
    onehot = np.eye(num_classes, dtype="float32")[y]
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
                  metrics=["accuracy"])
    h = model.fit(x[tr], onehot[tr], validation_data=(x[va], onehot[va]), epochs=epochs,
                  batch_size=32, verbose=0).history
    # the epoch of lowest validation loss (with label smoothing: the smoothed loss)
    best = int(np.argmin(h["val_loss"]))
    return {"best": h["val_accuracy"][best], "best_epoch": best + 1,
            **{f"@{e}": h["val_accuracy"][e - 1] for e in sorted({5, 10, 20, epochs}) if e <= epochs}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "hymenoptera")
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--per-class", type=int, default=None,
                        help="use this many images per class (fixed pool), for big folders")
    parser.add_argument("--val-fraction", type=float, default=153 / 398)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--features-cache", type=Path, default=None,
                        help=".npz file: reuse the backbone features saved there (or save them)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: data_samples/, a tiny backbone at 32 px, 1 split, 1 epoch "
                        "(checks that it runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.data, args.weights, args.image_size, args.splits, args.epochs = \
            _smoke.SAMPLES, None, 32, 1, 1
        args.backbone = _smoke.BACKBONE
    return args


@_smoke.eager_when_smoke
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.smoke:
        _smoke.register_backbone()
    if args.weights is not None and not args.weights.is_file():
        sys.exit(f"Weights file {args.weights} not found; pass --weights PATH (see "
                 "../shared/weights/README.md).")
    if not args.data.is_dir():
        sys.exit(f"Data folder {args.data} not found; pass --data DIR.")
    import numpy as np

    start = time.perf_counter()
    if args.features_cache and args.features_cache.is_file():
        saved = np.load(args.features_cache)
        x, y, num_classes = saved["x"], saved["y"], int(saved["num_classes"])
    else:
        x, y, num_classes = features(args.data, args.image_size, args.per_class,
                                     args.weights and args.weights.resolve(), args.backbone)
        if args.features_cache:
            np.savez(args.features_cache, x=x, y=y, num_classes=num_classes)
    print(f"features {x.shape} of {len(y)} images, {num_classes} classes, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    results = {}
    for name, (head, dropout, smoothing, lr) in VARIANTS.items():
        runs = [run_variant(x, y, num_classes, *split(y, args.val_fraction, s), head, dropout,
                            smoothing, lr, args.epochs, s) for s in range(args.splits)]
        results[name] = {k: [r[k] for r in runs] for k in runs[0]}
        summary = "  ".join(f"{k} {np.mean(v):.3f}" + (f"±{np.std(v, ddof=1):.3f}" if k == "best" and len(v) > 1 else "")
                            for k, v in results[name].items())
        print(f"{name:42s} {summary}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "image_size": args.image_size,
                                         "splits": args.splits, "epochs": args.epochs,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
