"""Unsupervised domain adaptation, measured: source-only vs each ``tt.adapt`` method.

Protocol (every number is a flag):

1. Source-only: ``build_transfer_model(--backbone, weights=--weights, head="avg")`` at
   ``--image-size`` px, the head trained on the labelled source training images
   (``fine_tune(head_epochs=--epochs, fine_tune_epochs=0)``, frozen backbone, Adam
   1e-3, cached features, no augmentation). Source training images: the source's
   ``train/`` (or all class folders but the held-out split, see below).
2. Each method adapts a copy of that model with ``tfx_transfer.adaptation.adapt.adapt`` on the
   target's *training* images, whose labels are dropped before adaptation (the
   labelled ``tf.data`` is passed; ``adapt`` keeps only the images). CORAL methods
   also get the labelled source training images.
3. Everything is scored by accuracy on the target's *validation* images (its ``val/``,
   or a stratified ``--validation-split`` of the class folders with the seed of the
   run -- the same split of file names on both sides when the target is a shifted
   copy made by ``benchmarks/make_shift.py``).

Each seed redraws the head initialisation, the data order and (without ``val/``)
the split. Prints one table (mean +- std over seeds, then each seed) and writes
JSON: ``{"mean_accuracy": {"source_only": ..., "<method>": ...}, "std_accuracy",
"per_seed", "default_method", "settings", "seconds"}``.

Usage (from the repository root)::

    python benchmarks/make_shift.py ../shared/datasets/hymenoptera --shift color_cast
    python benchmarks/domain_adaptation.py --source ../shared/datasets/hymenoptera \\
        --target /tmp/tfx_shifts/hymenoptera-color_cast --json /tmp/da_color_cast.json
    python benchmarks/domain_adaptation.py --smoke   # seconds: data_samples/ (8 + 4 per class) -> a color_cast copy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _smoke  # noqa: E402

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / \
    "mobilenet_1_0_224_imagenet_notop.weights.h5"


def _load(folder: str, image_size: int, batch_size: int, split: float, seed: int):
    import warnings

    from tfx_transfer.data.folder import load_image_folder

    root = Path(folder)
    has_val = any((root / name).is_dir() for name in ("val", "validation"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_image_folder(root, image_size=image_size, batch_size=batch_size, seed=seed,
                                 cache_images="memory",
                                 validation_split=None if has_val else split)


def _accuracy(model, dataset) -> float:
    import numpy as np

    right = total = 0
    for images, labels in dataset:
        pred = model.predict(images, verbose=0).argmax(axis=1)
        right += int((pred == np.asarray(labels)).sum())
        total += len(pred)
    return right / total


def run_seed(args, seed: int) -> dict[str, float]:
    import keras

    import tfx_transfer as tt
    from tfx_transfer.adaptation.adapt import adapt

    source = _load(args.source, args.image_size, args.batch_size, args.validation_split, seed)
    target = _load(args.target, args.image_size, args.batch_size, args.validation_split, seed)
    if target.class_names != source.class_names:
        raise SystemExit(f"target classes {target.class_names} != source {source.class_names} "
                         "(needed only to score the target validation images).")
    keras.utils.set_random_seed(seed)
    weights = None if args.weights == "none" else args.weights
    model = tt.build_transfer_model(args.backbone, source.num_classes,
                                    input_shape=args.image_size, weights=weights, head="avg")
    tt.fine_tune(model, source.train, head_epochs=args.epochs, fine_tune_epochs=0, verbose=0)
    scores = {"source_only": _accuracy(model, target.validation),
              "source_only_on_source_val": _accuracy(model, source.validation)}
    print(f"seed {seed}: source-only {scores['source_only']:.3f} on target "
          f"({scores['source_only_on_source_val']:.3f} on source val)", flush=True)
    for method in args.methods:
        start = time.time()
        plain = method == "adabn_plain"  # AdaBN from the target images alone
        adapted = adapt(model, target.train, "adabn" if plain else method,
                        source=None if plain else source.train, epochs=args.adapt_epochs,
                        lr=args.adapt_lr, loss_weight=args.loss_weight,
                        batch_size=args.batch_size, seed=seed)
        scores[method] = _accuracy(adapted, target.validation)
        print(f"seed {seed}: {method:<12} {scores[method]:.3f}  ({time.time() - start:.0f} s)",
              flush=True)
    return scores


def parse_args(argv=None) -> argparse.Namespace:
    from tfx_transfer.adaptation.adapt import METHODS
    from tfx_transfer.adaptation.coral import DEFAULT_LOSS_WEIGHT

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", help="labelled source folder (required)")
    parser.add_argument("--target",
                        help="target folder (class folders: labels used only for scoring val; "
                        "required)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                        help="backbone weights file, or none (default: the shared ImageNet "
                             "MobileNet v1 weights)")
    parser.add_argument("--epochs", type=int, default=15, help="source-only head epochs")
    parser.add_argument("--adapt-epochs", type=int, default=10, help="CORAL epochs")
    parser.add_argument("--adapt-lr", type=float, default=1e-4, help="CORAL learning rate")
    parser.add_argument("--loss-weight", type=float, default=DEFAULT_LOSS_WEIGHT,
                        help="weight of the CORAL loss term")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--validation-split", type=float, default=0.3,
                        help="held-out fraction for folders without val/")
    choices = list(METHODS) + ["adabn_plain"]
    parser.add_argument("--methods", nargs="+", default=choices, choices=choices,
                        help="adabn_plain: AdaBN without the source images")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: source data_samples/ (8 + 4 images per class), target a color_cast copy of it (in a "
                        "temporary folder), 32 px, random weights, 1 epoch, seed 0 (checks that it "
                        "runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.source, args.image_size, args.seeds, args.weights = str(_smoke.SAMPLES), 32, [0], "none"
        args.backbone = _smoke.BACKBONE
        args.epochs, args.adapt_epochs, args.batch_size = 1, 1, 16
    elif not (args.source and args.target):
        parser.error("--source and --target are required (or --smoke)")
    return args


def smoke_target(tmp: Path, source: Path = _smoke.SAMPLES) -> str:
    """A ``color_cast`` copy of ``source`` (data_samples/) in ``tmp`` (``make_shift.py``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_shift", Path(__file__).with_name("make_shift.py"))
    make_shift = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_shift)
    out = tmp / "target"
    make_shift.make_shift(source, out, "color_cast")
    return str(out)


@_smoke.eager_when_smoke
def main(argv=None) -> int:
    from tfx_transfer.adaptation.adapt import DEFAULT_METHOD

    args = parse_args(argv)
    if args.weights != "none" and not Path(args.weights).is_file():
        raise SystemExit(f"weights file {args.weights} is absent; pass --weights PATH or "
                         "--weights none (random init: source-only is then near chance).")

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="domain_adaptation_") as tmp:
        if args.smoke:
            _smoke.register_backbone()
            args.source = str(_smoke.samples(Path(tmp) / "source"))  # 8 + 4 images per class
            args.target = args.target or smoke_target(Path(tmp), Path(args.source))
        per_seed = {seed: run_seed(args, seed) for seed in args.seeds}

    import numpy as np

    keys = ["source_only"] + args.methods
    mean = {k: float(np.mean([per_seed[s][k] for s in args.seeds])) for k in keys}
    std = {k: float(np.std([per_seed[s][k] for s in args.seeds])) for k in keys}
    print(f"\ntarget accuracy, {Path(args.source).name} -> {Path(args.target).name}, "
          f"{args.backbone} {args.image_size} px, seeds {args.seeds}")
    print(f"{'method':<14}{'mean':>7} {'std':>6} {'vs source':>10}   per seed")
    for k in keys:
        seeds = " ".join(f"{per_seed[s][k]:.3f}" for s in args.seeds)
        gain = "" if k == "source_only" else f"{100 * (mean[k] - mean['source_only']):+.1f} pt"
        print(f"{k:<14}{mean[k]:>7.3f} {std[k]:>6.3f} {gain:>10}   {seeds}")
    source_val = np.mean([per_seed[s]["source_only_on_source_val"] for s in args.seeds])
    print(f"(source-only on the source's own validation images: {source_val:.3f}; "
          f"{time.time() - start:.0f} s in all)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "mean_accuracy": mean, "std_accuracy": std, "default_method": DEFAULT_METHOD,
            "per_seed": {str(s): v for s, v in per_seed.items()},
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "seconds": round(time.time() - start, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
