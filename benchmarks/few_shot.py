"""Few-shot transfer: weight imprinting vs a trained head vs nearest neighbour; classes added later.

Real photos (Caltech-101) through a frozen ImageNet MobileNet v1 (weights from a
file): the pooled backbone feature of every image of a fixed pool (``--per-class``
images per class, seed 0) is computed once with the kit's own
:func:`tfx_transfer.models.imprinting.penultimate_features` and cached (``--features-cache``).

Part 1, episodes: ``--episodes`` random draws of ``--ways`` classes per shot count
(1, 5, 10 by default); ``k`` support images per class, ``--query`` held-out images
per class scored. Per episode, on the same features:

* ``imprint``: a cosine head's rows set to the normalised mean feature (``tt.imprint``'s
  rule; no gradient step);
* ``imprint+E``: the same cosine head (``build_head(..., "cosine")``) then ``--few-epochs``
  epochs at the kit's head learning rate (what ``train(head="cosine", head_epochs=E)`` does);
* ``default head``: the kit's default head (``avg``: Dropout 0.2 + Dense softmax) trained
  ``DEFAULT_HEAD_EPOCHS`` epochs at ``DEFAULT_HEAD_LR`` (the head phase of ``train``'s defaults);
* ``1-NN``: nearest support image by cosine similarity.

Part 2, adding classes: ``--add-seeds`` times, ``--base`` random classes trained
(``--base-train`` images each: a cosine head imprinted then trained the defaults'
head epochs; a cosine head imprinted only; the default avg Dense head), then
``tt.add_classes`` with ``--new`` other classes from ``--new-shots`` images each (on
the real model: their pixels go through the backbone); old-class accuracy on held-out
images before/after, new-class accuracy. The Dense head is refused by
``tt.add_classes``; the two imprinting rules it was tried with (:func:`dense_rules`)
are measured here on the cached features, to show why.

Usage::

    python benchmarks/few_shot.py --data ../shared/datasets/caltech101 --image-size 128
    python benchmarks/few_shot.py --smoke     # seconds: data_samples/, 32 px, random weights
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _smoke  # noqa: E402
from benchmarks._sample import class_sample  # noqa: E402

SHARED = ROOT / ".." / "shared"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"
METHODS = ("imprint", "imprint+E", "default head", "1-NN")


def build(args: argparse.Namespace, num_classes: int, head: str):
    import tfx_transfer as tt

    return tt.build_transfer_model(args.backbone, num_classes, input_shape=args.image_size,
                                   weights=args.weights and str(args.weights), head=head)


def features(args: argparse.Namespace) -> dict:
    """Pooled features, labels, files and class names of the pool (cached in an .npz)."""
    import tfx_transfer as tt
    from tfx_transfer.models.imprinting import penultimate_features

    cache = args.features_cache
    if cache is not None and cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        print(f"features: reused {cache}")
        return {k: saved[k] for k in saved.files}
    with class_sample(args.data, args.per_class) as pool:  # the same images for every method
        folder = tt.load_image_folder(pool, image_size=args.image_size, batch_size=32,
                                      shuffle=False)
        model = build(args, folder.num_classes, "cosine")
        start = time.perf_counter()
        feats, labels = penultimate_features(model, folder.train.as_numpy_iterator())
        seconds = time.perf_counter() - start
        files = [os.path.realpath(p) for p, _ in folder.files["train"]]  # the originals: kept
    out = {"features": feats, "labels": labels, "class_names": np.array(folder.class_names),
           "files": np.array(files),
           "seconds_per_image": np.array(seconds / len(labels))}
    print(f"features: {len(labels)} images, {folder.num_classes} classes, "
          f"{1000 * seconds / len(labels):.1f} ms per image (decode + backbone)")
    if cache is not None:
        np.savez(cache, **out)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def train_head(kind: str, support: np.ndarray, labels: np.ndarray, ways: int, epochs: int,
               imprinted: tuple[np.ndarray, np.ndarray] | None, seed: int, eager: bool = False):
    """The kit's head on pooled features (a 1x1 map: average pooling is the identity), trained."""
    import keras

    import tfx_transfer as tt
    from tfx_transfer.training.finetune import DEFAULT_HEAD_LR

    keras.utils.set_random_seed(seed)
    head = tt.build_head((1, 1, support.shape[1]), ways, kind)
    if imprinted is not None:
        head.get_layer("predictions").kernel.assign(imprinted[0])
        head.get_layer("predictions").center.assign(imprinted[1])
    if epochs:
        head.compile(keras.optimizers.Adam(DEFAULT_HEAD_LR), "sparse_categorical_crossentropy",
                     run_eagerly=eager)
        head.fit(support[:, None, None, :], labels, batch_size=32, epochs=epochs, shuffle=True,
                 verbose=0)
    return lambda q: head.predict(q[:, None, None, :], batch_size=256, verbose=0)


def episode(feats: dict, ways: int, shots: int, query: int, args, rng) -> dict:
    from tfx_transfer.models.imprinting import class_directions

    x, y = feats["features"], feats["labels"]
    classes = rng.choice(np.unique(y), ways, replace=False)
    s_idx, q_idx, s_lab, q_lab = [], [], [], []
    for i, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        s_idx += list(idx[:shots])
        s_lab += [i] * shots
        take = idx[shots:shots + query]
        q_idx += list(take)
        q_lab += [i] * len(take)
    support, q = x[s_idx], x[q_idx]
    s_lab, q_lab = np.array(s_lab), np.array(q_lab)
    seed = int(rng.integers(1 << 30))
    acc, secs = {}, {}

    start = time.perf_counter()  # tt.imprint's rule: center = the images' mean feature
    center = support.mean(axis=0)
    directions, _ = class_directions(support - center, s_lab, ways)
    pred = (_unit(q - center) @ directions).argmax(1)
    secs["imprint"] = time.perf_counter() - start
    acc["imprint"] = float((pred == q_lab).mean())

    for name, kind, epochs, init in (("imprint+E", "cosine", args.few_epochs, (directions, center)),
                                     ("default head", "avg", args.head_epochs, None)):
        start = time.perf_counter()
        predict = train_head(kind, support, s_lab, ways, epochs, init, seed, eager=args.smoke)
        secs[name] = time.perf_counter() - start
        acc[name] = float((predict(q).argmax(1) == q_lab).mean())

    start = time.perf_counter()
    pred = s_lab[(_unit(q) @ _unit(support).T).argmax(1)]
    secs["1-NN"] = time.perf_counter() - start
    acc["1-NN"] = float((pred == q_lab).mean())
    return {"accuracy": acc, "seconds": secs, "support": len(s_idx), "query": len(q_idx)}


def _pixels(files: list[str], size: int) -> np.ndarray:
    from tfx_transfer.data.pipeline import files_dataset

    return np.concatenate([x for x, _ in files_dataset([(f, 0) for f in files], (size, size))
                           .as_numpy_iterator()])


def dense_rules(W: np.ndarray, b: np.ndarray, new_feats: np.ndarray, new_labels: np.ndarray,
                k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Imprinted rows for a trained Dense head (why tt.add_classes refuses it): kernel, bias.

    ``scaled``: unit class-mean direction times the trained rows' mean norm, bias their
    mean; ``centred``: the same on features centred on the new images' mean, bias
    shifted so the mean new image scores the trained biases' mean.
    """
    from tfx_transfer.models.imprinting import class_directions

    norm = float(np.linalg.norm(W, axis=0).mean())
    scaled, _ = class_directions(new_feats, new_labels, k)
    mu = new_feats.mean(axis=0)
    centred, _ = class_directions(new_feats - mu, new_labels, k)
    return {"scaled": (norm * scaled, np.full(k, b.mean())),
            "centred": (norm * centred, b.mean() - mu @ (norm * centred))}


def add_classes_trial(feats: dict, head: str, args, rng) -> list[dict]:
    """Train ``--base`` classes, add ``--new`` classes; old/new accuracy (one row per variant).

    ``head``: ``"cosine"`` (imprinted, then the default head epochs), ``"cosine-0"``
    (imprinted only), ``"avg"`` (the default head; the Dense rules of :func:`dense_rules`
    applied to its trained rows on the cached features, since tt.add_classes refuses it).
    """
    import keras

    import tfx_transfer as tt
    from tfx_transfer.models.imprinting import class_directions
    from tfx_transfer.training.finetune import DEFAULT_HEAD_LR

    x, y, files, names = feats["features"], feats["labels"], feats["files"], feats["class_names"]
    chosen = rng.choice(np.unique(y), args.base + args.new, replace=False)
    base, new = chosen[:args.base], chosen[args.base:]
    tr, te, tr_lab, te_lab = [], [], [], []
    for i, c in enumerate(base):
        idx = rng.permutation(np.flatnonzero(y == c))
        tr += list(idx[:args.base_train])
        tr_lab += [i] * len(idx[:args.base_train])
        te += list(idx[args.base_train:])
        te_lab += [i] * len(idx[args.base_train:])
    new_support, new_test, new_test_lab = [], [], []
    for i, c in enumerate(new):
        idx = rng.permutation(np.flatnonzero(y == c))
        new_support += list(idx[:args.new_shots])
        new_test += list(idx[args.new_shots:])
        new_test_lab += [args.base + i] * len(idx[args.new_shots:])
    tr_lab, te_lab, new_test_lab = np.array(tr_lab), np.array(te_lab), np.array(new_test_lab)

    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    model = build(args, args.base, "avg" if head == "avg" else "cosine")
    model.transfer_config["class_names"] = [str(names[c]) for c in base]

    def pooled(m):  # the model's own head layers on pooled features
        return keras.Sequential([keras.Input((x.shape[1],)), *m.head.layers[1:]])

    layer = model.head.get_layer("predictions")
    if head != "avg":  # tt.imprint's rule on the cached features
        layer.center.assign(x[tr].mean(axis=0))
        layer.kernel.assign(class_directions(x[tr] - x[tr].mean(axis=0), tr_lab, args.base)[0])
    small = pooled(model)
    if head != "cosine-0":
        small.compile(keras.optimizers.Adam(DEFAULT_HEAD_LR), "sparse_categorical_crossentropy",
                      run_eagerly=args.smoke)  # a smoke run: no tracing for a few steps
        small.fit(x[tr], tr_lab, batch_size=32, epochs=args.head_epochs, verbose=0)
    before = small.predict(x[te], verbose=0)

    def row(name: str, after: np.ndarray, after_new: np.ndarray, seconds: float) -> dict:
        return {"head": name, "old_before": float((before.argmax(1) == te_lab).mean()),
                "old_after": float((after.argmax(1) == te_lab).mean()),
                "changed": float((after.argmax(1) != before.argmax(1)).mean()),
                "new": float((after_new.argmax(1) == new_test_lab).mean()),
                "add_seconds": seconds, "old_images": len(te), "new_images": len(new_test)}

    new_labels = np.repeat(np.arange(args.new), args.new_shots)
    if head == "avg":
        W, b = (np.asarray(keras.ops.convert_to_numpy(v)) for v in (layer.kernel, layer.bias))
        rows = []
        for name, (Wn, bn) in dense_rules(W, b, x[new_support], new_labels, args.new).items():
            W2, b2 = np.concatenate([W, Wn], axis=1), np.concatenate([b, bn])
            rows.append(row(f"avg, {name} rows", x[te] @ W2 + b2, x[new_test] @ W2 + b2, 0.0))
        return rows
    pixels = _pixels([str(files[i]) for i in new_support], args.image_size)
    start = time.perf_counter()
    bigger = tt.add_classes(model, (pixels, new_labels), class_names=[str(names[c]) for c in new])
    seconds = time.perf_counter() - start
    big = pooled(bigger)
    return [row(head, big.predict(x[te], verbose=0), big.predict(x[new_test], verbose=0), seconds)]


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "caltech101")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=40, help="pool: images per class")
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--shots", default="1,5,10")
    parser.add_argument("--query", type=int, default=20, help="held-out images per class scored")
    parser.add_argument("--episodes", type=int, default=20, help="random class subsets per shot count")
    parser.add_argument("--few-epochs", type=int, default=5, help="epochs of imprint+E")
    parser.add_argument("--head-epochs", type=int, default=None,
                        help="epochs of the default head (default: the kit's DEFAULT_HEAD_EPOCHS)")
    parser.add_argument("--base", type=int, default=20, help="classes of the trained model")
    parser.add_argument("--base-train", type=int, default=20, help="training images per base class")
    parser.add_argument("--new", type=int, default=5, help="classes added")
    parser.add_argument("--new-shots", type=int, default=5, help="images per added class")
    parser.add_argument("--add-seeds", type=int, default=5)
    parser.add_argument("--add-variants", default="cosine,cosine-0,avg",
                        help="models classes are added to: cosine (imprinted + trained), cosine-0 "
                        "(imprinted only), avg (the default Dense head: the refused rules)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features-cache", type=Path, default=None,
                        help=".npz file: reuse the features saved there (or save them)")
    parser.add_argument("--json", type=Path, default=None, help="append the results as JSON lines")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: data_samples/, a tiny backbone at 32 px, 1 episode (checks "
                        "that it runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.head_epochs is None:
        from tfx_transfer.training.finetune import DEFAULT_HEAD_EPOCHS

        args.head_epochs = DEFAULT_HEAD_EPOCHS
    if args.smoke:
        args.head_epochs = 1
        args.data, args.weights, args.image_size, args.backbone = \
            _smoke.SAMPLES / "train", None, 32, _smoke.BACKBONE
        args.per_class, args.ways, args.shots, args.query, args.episodes = 8, 2, "1", 4, 1
        args.add_variants = "cosine-0,avg"
        args.few_epochs, args.base, args.base_train, args.new, args.new_shots, args.add_seeds = \
            1, 2, 4, 1, 2, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.smoke:
        _smoke.register_backbone()
    if args.weights is not None and not args.weights.is_file():
        sys.exit(f"Weights file {args.weights} not found; pass --weights PATH (see "
                 "../shared/weights/README.md).")
    if not args.data.is_dir():
        sys.exit(f"Data folder {args.data} not found; pass --data (see ../shared/datasets/README.md).")
    feats = features(args)
    per_image = float(feats["seconds_per_image"])
    rng = np.random.default_rng(args.seed)
    records = []
    print(f"\n{args.ways}-way episodes, {args.query} query images per class, {args.episodes} "
          f"episodes per row; accuracy mean ± std over episodes; head seconds per episode "
          f"(features cached: add {1000 * per_image:.0f} ms per support image for the backbone)")
    print(f"{'shots':>5}  " + "  ".join(f"{m:>15}" for m in METHODS) + "   seconds: "
          + " / ".join(METHODS))
    for shots in [int(s) for s in args.shots.split(",")]:
        runs = [episode(feats, args.ways, shots, args.query, args, rng) for _ in range(args.episodes)]
        accs = {m: [r["accuracy"][m] for r in runs] for m in METHODS}
        secs = {m: float(np.mean([r["seconds"][m] for r in runs])) for m in METHODS}
        print(f"{shots:>5}  " + "  ".join(f"{_ms(accs[m]):>15}" for m in METHODS) + "   "
              + " / ".join(f"{secs[m]:.3f}" for m in METHODS))
        records.append({"benchmark": "few_shot", "part": "episodes", "ways": args.ways,
                        "shots": shots, "episodes": args.episodes, "query": args.query,
                        "image_size": args.image_size, "backbone": args.backbone,
                        "few_epochs": args.few_epochs,
                        "accuracy": {m: [float(np.mean(v)), float(np.std(v))] for m, v in accs.items()},
                        "head_seconds": secs, "feature_seconds_per_image": per_image})
    print(f"\nadding {args.new} classes ({args.new_shots} images each) to a {args.base}-class model "
          f"({args.base_train} training images per class), {args.add_seeds} seeds: accuracy on "
          "held-out images")
    print(f"{'head':>20}  {'old before':>15}  {'old after':>15}  {'changed':>15}  {'new classes':>15}")
    by_variant: dict[str, list[dict]] = {}
    for head in args.add_variants.split(","):
        for _ in range(args.add_seeds):
            for trial in add_classes_trial(feats, head, args, rng):
                by_variant.setdefault(trial["head"], []).append(trial)
    for name, trials in by_variant.items():
        cols = {k: [t[k] for t in trials] for k in ("old_before", "old_after", "changed", "new")}
        drop = [100 * (t["old_before"] - t["old_after"]) for t in trials]
        print(f"{name:>20}  " + "  ".join(f"{_ms(cols[k]):>15}" for k in cols)
              + f"   old-class cost {np.mean(drop):.2f} points (max {np.max(drop):.2f}); "
              f"add_classes {np.mean([t['add_seconds'] for t in trials]):.1f} s")
        records.append({"benchmark": "few_shot", "part": "add_classes", "head": name,
                        "base": args.base, "base_train": args.base_train, "new": args.new,
                        "new_shots": args.new_shots, "seeds": args.add_seeds,
                        "image_size": args.image_size, "backbone": args.backbone, "trials": trials})
    if args.json is not None:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
