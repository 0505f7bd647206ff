"""Tables and multi-label images on real photos: the kit vs what a user would write instead.

Two measurements, both on Caltech-101 photos read through a CSV table:

1. **Multi-label, 2x2 mosaics.** Each mosaic shows four photos of four different classes
   (of ``--classes`` Caltech classes) and is labelled with those four classes. Train /
   validation mosaics are cut from one pool of photos, test mosaics from another (no test
   photo is seen in training). Generated into a temporary folder (``--work``, default
   under /tmp), never into the repository. Compared, on the same mosaics, same
   backbone (MobileNet v1 with real ImageNet weights from ``--weights``) and size:

   * ``kit``: ``tt.train(tags.csv, ..., label_delim=" ", valid_col="is_valid")`` with every
     training setting at its default (two phases, standard augmentation, thresholds chosen
     on the validation mosaics); the run's ``model.keras`` is scored on the test mosaics;
     its default head for multi-label data is ``"spatial"``; ``kit head=avg`` is the same
     run with the ``"avg"`` head (``--kit-heads``), to show what the head adds;
   * ``probe``: the obvious alternative -- backbone features computed once
     (global average pooling), one ``Dense(C, sigmoid)`` trained with binary
     cross-entropy (Adam 1e-3, ``--probe-epochs`` epochs, batch 32), threshold 0.5;
     ``probe+thr``: the same probe with per-label thresholds chosen on the validation
     mosaics as the kit does (mAP is threshold-free, so only F1 changes).

   Reported: test mAP, micro-F1, macro-F1, training wall time and training images/s
   (mosaics x epochs / seconds).

2. **Table vs copying into folders.** ``--table-images`` Caltech photos listed in a CSV
   (absolute paths): ``load_image_table(csv)`` vs what one does without it -- copy the
   files into class folders, then ``load_image_folder`` -- each followed by one pass over
   the training batches (decode + resize, no cache); fresh verification caches for both.
   Also checks that both give the same files and labels.

Usage (from the repository root; the shared folders sit beside it)::

    python benchmarks/multi_label.py --classes 12 --train 240 --val 80 --test 160 \\
        --image-size 160 --json benchmarks/results/multi_label_cpu.jsonl
    python benchmarks/multi_label.py --smoke    # seconds: data_samples/, tiny backbone, 32 px
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _smoke  # noqa: E402

SHARED = ROOT / ".." / "shared"
DEFAULT_DATA = SHARED / "datasets" / "caltech101"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"
SUFFIXES = (".jpg", ".jpeg", ".png")


LAYOUTS = {1: [(0, 0, 1, 1)],  # cells as (x, y, width, height) fractions of the image
           2: [(0, 0, 0.5, 1), (0.5, 0, 0.5, 1)],
           4: [(0, 0, 0.5, 0.5), (0.5, 0, 0.5, 0.5), (0, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5)]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class folders")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="MobileNet weights file")
    p.add_argument("--classes", type=int, default=12, help="classes in the mosaics")
    p.add_argument("--train", type=int, default=240, help="training mosaics")
    p.add_argument("--val", type=int, default=80, help="validation mosaics")
    p.add_argument("--test", type=int, default=160, help="test mosaics")
    p.add_argument("--image-size", type=int, default=160, help="mosaic side in pixels")
    p.add_argument("--tiles", type=int, nargs="+", choices=sorted(LAYOUTS), default=[1, 2, 4],
                   help="layouts drawn at random per image: photos per image (1, 2 side by side, 4 as 2x2)")
    p.add_argument("--probe-epochs", type=int, default=200, help="epochs of the linear probe")
    p.add_argument("--table-images", type=int, default=1000, help="photos in the table-vs-folder test")
    p.add_argument("--kit-heads", nargs="+", default=["default", "avg"], metavar="default|HEAD",
                   help="the kit's runs: 'default' (train()'s head for multi-label data) and/or other heads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="folder for mosaics and runs (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="append the results as JSON lines")
    p.add_argument("--smoke", action="store_true", help="seconds: data_samples/, tiny backbone, 32 px")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.weights, args.kit_heads = _smoke.SAMPLES / "train", None, ["default"]
        args.classes, args.train, args.val, args.test = 3, 8, 4, 4
        args.image_size, args.probe_epochs, args.table_images = _smoke.IMAGE_SIZE, 2, 12
    return args


def class_photos(data: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in SUFFIXES)
            for d in sorted(data.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def _fill(photo: Path, width: int, height: int):
    """``photo`` centre-cropped to the cell's aspect ratio and resized to it (no distortion)."""
    from PIL import Image, ImageOps

    with Image.open(photo) as im:
        return ImageOps.fit(im.convert("RGB"), (width, height), Image.Resampling.BILINEAR)


def make_mosaics(photos: dict[str, list[Path]], args: argparse.Namespace, out: Path) -> dict[str, Path]:
    """``tags.csv`` (train + validation, ``is_valid``) and ``test.csv`` of photo mosaics.

    Each image takes a layout from ``args.tiles`` at random (1: one photo, 2: side by side,
    4: 2x2), fills its cells with photos of different classes and is labelled with them.
    Each class's photos are split 50/20/30 into pools for the train, validation and test
    images: no photo appears in two splits.
    """
    from PIL import Image

    rng = np.random.default_rng(args.seed)
    classes = sorted(rng.choice(sorted(photos), size=args.classes, replace=False).tolist())
    pools = {}
    for name in classes:
        files = list(rng.permutation(photos[name]))
        a, b = int(len(files) * 0.5), int(len(files) * 0.7)
        pools[name] = {"train": files[:a], "val": files[a:b], "test": files[b:]}
    size = args.image_size
    out.mkdir(parents=True, exist_ok=True)
    rows = {"fit": [], "test": []}
    for split, count in (("train", args.train), ("val", args.val), ("test", args.test)):
        for i in range(count):
            cells = LAYOUTS[int(rng.choice(args.tiles))]
            chosen = rng.choice(classes, size=min(len(cells), len(classes)), replace=False)
            canvas = Image.new("RGB", (size, size))
            for k, (x, y, w, h) in enumerate(cells):
                pool = pools[chosen[k % len(chosen)]][split]
                cell = (round(w * size), round(h * size))
                canvas.paste(_fill(pool[rng.integers(len(pool))], *cell), (round(x * size), round(y * size)))
            path = out / f"{split}_{i:04d}.jpg"
            canvas.save(path, quality=92)
            rows["test" if split == "test" else "fit"].append(
                [path.name, " ".join(sorted(chosen)), int(split == "val")])
    files = {}
    for target, name in (("fit", "tags.csv"), ("test", "test.csv")):
        files[target] = out / name
        with open(files[target], "w", newline="") as f:
            csv.writer(f).writerows([["filename", "tags", "is_valid"], *rows[target]])
    return files


def _backbone(args: argparse.Namespace) -> tuple[str, object]:
    if args.smoke:
        return _smoke.register_backbone(), None
    return "mobilenet", str(args.weights)


def run_kit(tables: dict[str, Path], args: argparse.Namespace, work: Path,
            head: str = "default") -> dict:
    import tfx_transfer as tt
    from tfx_transfer.data.table import TableSpec

    backbone, weights = _backbone(args)
    extra = dict(head_epochs=1, fine_tune_epochs=0, augmentation="none") if args.smoke else {}
    if head != "default":
        extra["head"] = head
    run = work / f"kit_run_{head}"
    start = time.perf_counter()
    result = tt.train(tables["fit"], run, backbone=backbone, weights=weights or "none",
                      image_size=args.image_size, label_delim=" ", y_col="tags", valid_col="is_valid",
                      seed=args.seed, verbose=0, **extra)
    seconds = time.perf_counter() - start
    config = result["config"]
    epochs = config["head_epochs"] + config["fine_tune_epochs"]
    test = TableSpec(tables["test"], y_col="tags", label_delim=" ")
    metrics = tt.evaluate_model(run / "model.keras", test, verbose=False)
    return {"recipe": "kit" if head == "default" else f"kit head={head}",
            "settings": f"train() defaults{'' if head == 'default' else f' but head={head}'}: "
            f"{config['head']} head, {config['head_epochs']}+{config['fine_tune_epochs']} epochs, "
            f"augmentation {config['augmentation']}",
            "seconds": seconds, "train_images_per_s": args.train * epochs / seconds,
            **{k: metrics[k] for k in ("mAP", "micro_f1", "macro_f1")}}


def run_probe(tables: dict[str, Path], args: argparse.Namespace) -> list[dict]:
    import keras

    import tfx_transfer as tt
    from tfx_transfer.evaluation.multilabel import choose_thresholds, multilabel_metrics

    backbone, weights = _backbone(args)
    size = (args.image_size, args.image_size)
    fit = tt.load_image_table(tables["fit"], y_col="tags", label_delim=" ", valid_col="is_valid",
                              image_size=size, shuffle=False)
    test = tt.load_image_table(tables["test"], y_col="tags", label_delim=" ", image_size=size,
                               shuffle=False)
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    model = tt.build_transfer_model(backbone, fit.num_classes, input_shape=size + (3,),
                                    weights=weights, head="avg")
    features = keras.Model(model.inputs, keras.layers.GlobalAveragePooling2D()(model.get_layer("backbone").output))

    def extract(dataset):
        pairs = [(features.predict_on_batch(x), y) for x, y in dataset]
        return np.concatenate([f for f, _ in pairs]), np.concatenate([np.asarray(y) for _, y in pairs])

    (xt, yt), (xv, yv) = extract(fit.train), extract(fit.validation)
    probe = keras.Sequential([keras.Input(xt.shape[1:]), keras.layers.Dense(fit.num_classes, activation="sigmoid")])
    probe.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    probe.fit(xt, yt, batch_size=32, epochs=args.probe_epochs, verbose=0)
    seconds = time.perf_counter() - start
    names = list(fit.class_names)
    order = [names.index(n) for n in test.class_names]  # test's labels in the fit table's order
    xs, ys_raw = extract(test.train)
    ys = np.zeros((len(ys_raw), len(names)), np.float32)
    ys[:, order] = ys_raw
    scores = probe.predict(xs, verbose=0)
    thresholds = choose_thresholds(yv, probe.predict(xv, verbose=0))
    out = []
    for recipe, t in (("probe", None), ("probe+thr", thresholds)):
        m = multilabel_metrics(ys, scores, names, t)
        out.append({"recipe": recipe, "settings": f"frozen features, Dense sigmoid, {args.probe_epochs} "
                    "epochs" + (", thresholds on validation" if t else ", threshold 0.5"),
                    "seconds": seconds, "train_images_per_s": args.train * args.probe_epochs / seconds,
                    **{k: m[k] for k in ("mAP", "micro_f1", "macro_f1")}})
    return out


def table_vs_folders(photos: dict[str, list[Path]], args: argparse.Namespace, work: Path) -> list[dict]:
    import tfx_transfer as tt

    per_class = max(1, args.table_images // len(photos))
    chosen = [(p, name) for name, files in photos.items() for p in files[:per_class]][: args.table_images]
    table = work / "caltech.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["filename", "class"], *[[str(p.resolve()), n] for p, n in chosen]])
    size = (args.image_size, args.image_size)

    def one_pass(folder) -> None:
        for _ in folder.train:
            pass

    results, loaded = [], {}
    for recipe in ("table", "copy+folder"):
        os.environ["TFX_TRANSFER_CACHE_DIR"] = str(work / f"verify_{recipe}")  # decode everything
        start = time.perf_counter()
        if recipe == "table":
            data = tt.load_image_table(table, image_size=size, validation_split=0.2, seed=args.seed)
        else:
            root = work / "copied"
            for path, name in chosen:
                (root / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, root / name / path.name)
            data = tt.load_image_folder(root, image_size=size, validation_split=0.2, seed=args.seed)
        listed = time.perf_counter() - start
        one_pass(data)
        seconds = time.perf_counter() - start
        loaded[recipe] = data
        results.append({"recipe": recipe, "images": len(chosen), "load_seconds": listed,
                        "seconds": seconds, "images_per_s": len(chosen) / seconds})
    os.environ.pop("TFX_TRANSFER_CACHE_DIR", None)
    same = [(Path(p).name, lab) for p, lab in loaded["table"].files["train"]] == \
        [(Path(p).name, lab) for p, lab in loaded["copy+folder"].files["train"]]
    for row in results:
        row["same_files_and_labels"] = same
    return results


@_smoke.eager_when_smoke
def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if not args.data.is_dir() or (args.weights is not None and not args.weights.is_file()):
        raise SystemExit(f"needs the photos {args.data} and the weights {args.weights} (../shared/, "
                         "beside the repository); they are absent here. --smoke runs without them.")
    work = args.work or Path(tempfile.mkdtemp(prefix="multi_label_"))
    photos = class_photos(args.data)
    tables = make_mosaics(photos, args, work / "mosaics")
    print(f"mosaics: {args.train} train, {args.val} validation, {args.test} test, {args.classes} "
          f"classes, {'/'.join(map(str, args.tiles))} photos of different classes each, "
          f"{args.image_size} px, under {work}")
    rows = run_probe(tables, args) + [run_kit(tables, args, work, h) for h in args.kit_heads]
    common = {"data": args.data.name, "image_size": args.image_size, "classes": args.classes,
              "tiles": list(args.tiles),
              "mosaics": [args.train, args.val, args.test], "seed": args.seed, "smoke": args.smoke}
    print("| recipe | test mAP | micro-F1 | macro-F1 | train s | train img/s | settings |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['recipe']} | {row['mAP']:.3f} | {row['micro_f1']:.3f} | {row['macro_f1']:.3f} | "
              f"{row['seconds']:.0f} | {row['train_images_per_s']:.1f} | {row['settings']} |")
    speed = table_vs_folders(photos, args, work)
    for row in speed:
        print(f"{row['recipe']}: {row['images']} photos, listed+verified in {row['load_seconds']:.1f} s, "
              f"+ one pass {row['seconds']:.1f} s: {row['images_per_s']:.1f} images/s "
              f"(same files and labels: {row['same_files_and_labels']})")
    records = [{**common, "part": "multi_label", **row} for row in rows] + \
        [{**common, "part": "table_vs_folders", **row} for row in speed]
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return records


if __name__ == "__main__":
    main()
