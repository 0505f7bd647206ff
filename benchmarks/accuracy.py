"""Accuracy with real ImageNet features: the kit's defaults vs the well-known recipes.

Same backbone (MobileNet v1 1.0, real ImageNet weights from a file), same data, same
image size, several seeds; validation accuracy (mean +- std) and wall time per run:

* ``a``  kit: ``tt.train(data, out, backbone=..., weights=PATH, image_size=SIZE, seed=S)``,
  every other setting at its default (the size is given only to keep the CPU cost down;
  the table says which);
* ``b``  keras: the Keras transfer-learning guide written by hand in plain Keras
  (https://keras.io/guides/transfer_learning/): RandomFlip + RandomRotation(0.1),
  the backbone's rescaling, frozen base called with ``training=False``,
  GlobalAveragePooling2D -> Dropout(0.2) -> Dense; Adam 1e-3 for 20 epochs; then
  ``base.trainable = True``, recompile, Adam 1e-5 for 10 epochs; the final model;
* ``c``  fastai-style, with the kit: ``fine_tune`` 1 head epoch at 2e-3 then the
  whole backbone unfrozen (BatchNorm trained, as fastai does) for 5 epochs with
  discriminative learning rates (1.4x per block: ~100x from head to stem, fastai's
  ``slice(lr/100, lr)``), AdamW (weight decay 0.01), cosine decay per epoch from 1e-3;
* ``d``  scratch: the same network from random initialisation, everything trained,
  Adam 1e-3, ``--scratch-epochs`` epochs, standard augmentation;
* ``e``  (a) + test-time augmentation: the same run's model scored with
  ``tt.evaluate_model(..., tta=True)`` (its time includes the run's training).

Every recipe reads the images through ``tt.load_image_folder`` (decoded images
cached in memory for b-d; ``train`` chooses for itself). Data sets: a folder with
``train/`` and ``val/`` (hymenoptera) is used as it is, the seed changes only the
initialisation, shuffling and augmentation; a folder of class folders (caltech101)
gets a stratified split per seed (``--per-class TRAIN,VAL`` images per class), so
the seeds are repeated splits.

Usage (from the repository root; the shared folders sit beside it)::

    python benchmarks/accuracy.py --data ../shared/datasets/hymenoptera --image-size 160
    python benchmarks/accuracy.py --data ../shared/datasets/caltech101 --image-size 128 \\
        --per-class 8,4 --recipes a,b,c --json /tmp/acc_caltech.json
    python benchmarks/accuracy.py --summarize /tmp/acc_hym.json /tmp/acc_caltech.json
    python benchmarks/accuracy.py --smoke     # seconds: every recipe once on data_samples/ (8 + 4
                                              # images per class), 32 px, random weights, one epoch
                                              # per phase, the smoke modes' tiny backbone: runs, no
                                              # figure
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _smoke  # noqa: E402

SHARED = ROOT / ".." / "shared"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"
RECIPES = {"a": "kit train (defaults)", "b": "Keras guide (plain Keras)",
           "c": "fastai-style (kit)", "d": "scratch (random init)", "e": "kit train + TTA"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def split_folder(data: Path, per_class: tuple[int, int], seed: int, tmp: Path) -> Path:
    """``data`` itself when it has ``train/`` + ``val/``; else a seeded stratified split (symlinks)."""
    if (data / "train").is_dir() and (data / "val").is_dir():
        return data
    out = tmp / f"split_seed{seed}"
    if out.exists():
        return out
    n_train, n_val = per_class
    rng = random.Random(seed)
    for class_dir in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rng.shuffle(files)
        if len(files) < n_train + n_val:
            raise SystemExit(f"{class_dir} has {len(files)} images, fewer than --per-class "
                             f"{n_train},{n_val}; lower it.")
        for split, chosen in (("train", files[:n_train]), ("val", files[n_train:n_train + n_val])):
            (out / split / class_dir.name).mkdir(parents=True)
            for path in chosen:
                (out / split / class_dir.name / path.name).symlink_to(path.resolve())
    return out


def _folder(data: Path, size: int, seed: int, batch_size: int = 32):
    import tfx_transfer as tt

    return tt.load_image_folder(data, image_size=size, batch_size=batch_size, seed=seed, cache_images="memory")


def _accuracy(model, dataset) -> float:
    import numpy as np

    labels = np.concatenate([np.asarray(y) for _, y in dataset])
    pred = np.argmax(model.predict(dataset, verbose=0), axis=-1)
    return float((pred == labels).mean())


def recipe_kit(data: Path, size: int, seed: int, weights: Path, backbone: str, tmp: Path,
               tta: bool = False, overrides: dict | None = None) -> dict:
    """(a); with ``tta`` the same run's model is also scored with TTA (``accuracy_tta``)."""
    import tfx_transfer as tt

    out = tmp / f"run_{backbone}_{seed}_{time.time_ns()}"
    result = tt.train(data, out, backbone=backbone, weights=weights and str(weights), image_size=size,
                      seed=seed, verbose=0, **(overrides or {}))
    record = {"accuracy": result["metrics"]["accuracy"],
              "settings": {k: result["config"].get(k) for k in sorted(result["config"])
                           if k not in ("class_names", "counts", "versions", "created", "data_dir")}}
    history = (out / "history.csv").read_text().splitlines()
    columns = history[0].split(",")
    rows = [dict(zip(columns, line.split(","))) for line in history[1:]]
    record["val_accuracy_per_epoch"] = [round(float(r["val_accuracy"]), 4) for r in rows]
    record["best"] = result["best"]
    if tta:
        start = time.perf_counter()
        model = tt.load_model(result["paths"]["model"])
        folder = _folder(data, size, seed)
        metrics = tt.evaluate_model(model, folder.validation, folder.class_names, tta=True,
                                    verbose=False)
        record["accuracy_tta"] = metrics["tta"]["accuracy"]
        record["tta_seconds"] = round(time.perf_counter() - start, 1)
    shutil.rmtree(out, ignore_errors=True)
    return record


def recipe_keras_guide(data: Path, size: int, seed: int, weights: Path | None, backbone: str,
                       tmp: Path, epochs: tuple[int, int] = (20, 10)) -> dict:
    import keras

    import tfx_transfer as tt

    spec = tt.get_backbone(backbone)
    if spec.preprocessing != "tf":
        raise SystemExit("recipe b is written for MobileNet v1 (its rescaling to [-1, 1]); use "
                         "--backbone mobilenet.")
    keras.utils.set_random_seed(seed)
    folder = _folder(data, size, seed)
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                                     keras.layers.RandomRotation(0.1)])
    # keras.applications.MobileNet(weights=None, include_top=False, input_shape=...) for mobilenet
    base = spec.build((size, size, 3))
    if weights is not None:
        base.load_weights(str(weights))
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = augmentation(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(folder.num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    h1 = model.fit(folder.train, validation_data=folder.validation, epochs=epochs[0], verbose=0)
    base.trainable = True
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    h2 = model.fit(folder.train, validation_data=folder.validation, epochs=epochs[1], verbose=0)
    val = h1.history["val_accuracy"] + h2.history["val_accuracy"]
    return {"accuracy": _accuracy(model, folder.validation), "best_epoch_accuracy": max(val),
            "settings": {"head": "avg + dropout 0.2", "epochs": f"{epochs[0]} + {epochs[1]} (all unfrozen)",
                         "lr": "1e-3 then 1e-5", "augmentation": "flip + rotation 0.1"}}


def recipe_fastai(data: Path, size: int, seed: int, weights: Path, backbone: str, tmp: Path,
                  head_epochs: int = 1, epochs: int = 5, lr: float = 1e-3) -> dict:
    import math

    import keras

    import tfx_transfer as tt

    keras.utils.set_random_seed(seed)
    folder = _folder(data, size, seed)
    model = tt.build_transfer_model(backbone, folder.num_classes, input_shape=(size, size, 3),
                                    weights=weights and str(weights), head="avg", dropout=0.5,
                                    augmentation=tt.Augmentation(preset="light", seed=seed))

    def schedule(epoch: int, current: float) -> float:  # head: 2*lr flat; then cosine from lr
        if epoch < head_epochs:
            return 2 * lr
        t = (epoch - head_epochs) / max(1, epochs)
        return lr * 0.5 * (1 + math.cos(math.pi * t))

    history = tt.fine_tune(
        model, folder.train, folder.validation, head_epochs=head_epochs, fine_tune_epochs=epochs,
        blocks="all", fine_tune_lr=lr, discriminative=1.4, train_bn=True,
        optimizer=keras.optimizers.AdamW(learning_rate=2 * lr, weight_decay=0.01),
        callbacks=[keras.callbacks.LearningRateScheduler(schedule)], cache_features=False, verbose=0)
    return {"accuracy": _accuracy(model, folder.validation),
            "best_epoch_accuracy": max(history.history["val_accuracy"]),
            "settings": {"head": "avg + dropout 0.5", "epochs": f"{head_epochs} + {epochs} (all unfrozen, BN trained)",
                         "lr": f"{2 * lr:g} head; cosine from {lr:g}, discriminative 1.4x/block",
                         "optimizer": "AdamW wd 0.01", "augmentation": "light"}}


def recipe_scratch(data: Path, size: int, seed: int, weights: Path, backbone: str, tmp: Path,
                   epochs: int = 10) -> dict:
    import keras

    import tfx_transfer as tt

    keras.utils.set_random_seed(seed)
    folder = _folder(data, size, seed)
    model = tt.build_transfer_model(backbone, folder.num_classes, input_shape=(size, size, 3),
                                    weights=None, head="avg", dropout=0.2,
                                    augmentation=tt.Augmentation(preset="standard", seed=seed))
    tt.unfreeze(model, "all", train_bn=True)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(folder.train, validation_data=folder.validation, epochs=epochs, verbose=0)
    return {"accuracy": _accuracy(model, folder.validation),
            "best_epoch_accuracy": max(history.history["val_accuracy"]),
            "settings": {"head": "avg + dropout 0.2", "epochs": f"{epochs} (all trained)",
                         "lr": "Adam 1e-3", "augmentation": "standard"}}


def summarize(records: list[dict]) -> str:
    """A markdown table: one row per (data, recipe), accuracy mean +- std over seeds, time."""
    import numpy as np

    rows, groups = [], {}
    for r in records:
        per_class = tuple(r["per_class"]) if r.get("per_class") else None
        overrides = json.dumps(r["overrides"], sort_keys=True) if r.get("overrides") else ""
        groups.setdefault((r["data"], r["image_size"], per_class, r["recipe"], overrides), []).append(r)
    lines = ["| data | size | recipe | seeds | val accuracy (mean ± std) | min-max | wall time / run |",
             "|---|---|---|---|---|---|---|"]
    for (data, size, per_class, recipe, overrides), runs in sorted(groups.items()):
        acc = np.array([r["accuracy"] for r in runs])
        secs = np.array([r["seconds"] for r in runs])
        name = Path(data).name + (f" ({per_class[0]}+{per_class[1]}/class)" if per_class else "")
        label = f"({recipe}) {RECIPES[recipe]}" + (f" with {overrides}" if overrides else "")
        rows.append(f"| {name} | {size} px | {label} | {len(runs)} | "
                    f"{acc.mean():.3f}" + (f" ± {acc.std(ddof=1):.3f}" if len(acc) > 1 else " (1 seed)")
                    + " | "
                    f"{acc.min():.3f}-{acc.max():.3f} | {secs.mean() / 60:.1f} min |")
    return "\n".join(lines + rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                        help="backbone ImageNet weights file (default: ../shared/weights/...)")
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "hymenoptera",
                        help="train/ + val/ folder, or a folder of class folders (split per seed)")
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", default="8,4",
                        help="TRAIN,VAL images per class for a folder without train/val")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    parser.add_argument("--scratch-epochs", type=int, default=10)
    parser.add_argument("--kit-overrides", type=json.loads, default=None,
                        help='JSON dict of train() arguments for recipes a/e, to compare settings '
                        '(e.g. \'{"head": "flatten"}\'); the table lists them')
    parser.add_argument("--json", type=Path, default=None,
                        help="append one JSON record per run to this file (JSON lines)")
    parser.add_argument("--summarize", type=Path, nargs="+", default=None,
                        help="only print the table of these JSON-lines files")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: the chosen recipes once on data_samples/ (8 + 4 images per class) at 32 px, random "
                        "weights, one epoch per phase, a tiny backbone (checks that it runs; the "
                        "figures mean nothing)")
    args = parser.parse_args(argv)
    # epochs of (b) (head, fine-tuning) and (c) (head, unfrozen): the recipes' own
    args.guide_epochs, args.fastai_epochs = (20, 10), (1, 5)
    if args.smoke:
        args.data, args.weights, args.image_size, args.seeds = _smoke.SAMPLES, None, 32, [0]
        args.backbone = _smoke.BACKBONE
        args.scratch_epochs, args.guide_epochs, args.fastai_epochs = 1, (1, 1), (1, 1)
        args.kit_overrides = {"head_epochs": 1, "fine_tune_epochs": 1, **(args.kit_overrides or {})}
    return args


@_smoke.eager_when_smoke
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    if args.summarize:
        records = [json.loads(line) for path in args.summarize for line in path.read_text().splitlines()
                   if line.strip()]
        print(summarize(records))
        return
    if args.weights is not None and not args.weights.is_file():
        sys.exit(f"Weights file {args.weights} not found. Pass --weights PATH (the MobileNet v1 "
                 "ImageNet weights: ../shared/weights/mobilenet_1_0_224_imagenet_notop.weights.h5, "
                 "see its README). Without ImageNet weights this benchmark measures nothing useful.")
    if not args.data.is_dir():
        sys.exit(f"Data folder {args.data} not found. Pass --data DIR: "
                 "../shared/datasets/hymenoptera or ../shared/datasets/caltech101 (see their README).")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        sys.exit(f"--recipes: unknown {unknown}; choose from {sorted(RECIPES)}.")
    per_class = tuple(int(v) for v in args.per_class.split(","))
    has_split = (args.data / "train").is_dir() and (args.data / "val").is_dir()
    tta = "e" in recipes
    functions = {"a": lambda *a: recipe_kit(*a, tta=tta, overrides=args.kit_overrides),
                 "b": lambda *a: recipe_keras_guide(*a, epochs=args.guide_epochs),
                 "c": lambda *a: recipe_fastai(*a, head_epochs=args.fastai_epochs[0],
                                               epochs=args.fastai_epochs[1]),
                 "d": lambda *a: recipe_scratch(*a, epochs=args.scratch_epochs)}
    if args.smoke:
        _smoke.register_backbone()
    records = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.smoke:  # 8 + 4 images per class: one training step per epoch
            args.data = _smoke.samples(tmp)
        for seed in args.seeds:
            data = split_folder(args.data.resolve(), per_class, seed, tmp)
            for recipe in [r for r in recipes if r != "e"] + (["a"] if tta and "a" not in recipes else []):
                start = time.perf_counter()
                weights = args.weights and args.weights.resolve()
                record = functions[recipe](data, args.image_size, seed, weights,
                                           args.backbone, tmp)
                record.update(data=str(args.data), image_size=args.image_size, recipe=recipe,
                              seed=seed, seconds=round(time.perf_counter() - start, 1),
                              per_class=None if has_split else list(per_class),
                              backbone=args.backbone, cpu_cores=os.cpu_count())
                if recipe == "a" and args.kit_overrides:
                    record["overrides"] = args.kit_overrides
                runs = [record]
                if recipe == "a" and tta:  # (e): the same run, scored with TTA
                    runs.append(dict(record, recipe="e", accuracy=record["accuracy_tta"]))
                    if "a" not in recipes:
                        runs.pop(0)
                for run in runs:
                    records.append(run)
                    print(f"seed {seed} ({run['recipe']}) {RECIPES[run['recipe']]}: accuracy "
                          f"{run['accuracy']:.4f} in {run['seconds'] / 60:.1f} min", flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(run) + "\n")
    print(summarize(records))


if __name__ == "__main__":
    main()
