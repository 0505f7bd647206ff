"""Images of no known class: the kit's unknown score against the known alternatives, on real photos.

A MobileNet v1 (ImageNet weights from a file, frozen) with the kit's ``avg`` head trained on
cached pooled features (Adam 1e-3, dropout 0.2, 60 epochs) for two tasks:

* ``A``: known = hymenoptera (ants, bees: 245 train images; its 153 val images split
  seeded in half: one half fits the temperature and the thresholds, the other is the known
  test set); unknown = 20 Caltech-101 categories (20 images each, insects left out);
* ``B``: known = 10 Caltech-101 categories (20 train / 10 val / 10 test images each);
  unknown = hymenoptera val (153) + 10 other Caltech-101 categories (20 each).

Scores (higher = more unknown): ``msp`` 1 - the top softmax probability (Hendrycks &
Gimpel 2017); ``energy`` -logsumexp(logits) (Liu et al. 2020); ``mahalanobis`` the
smallest class-conditional Mahalanobis distance of the pooled features with one shared
covariance (shrunk 10% toward its mean variance; Lee et al. 2018); ``knn`` the kit's
default (:mod:`tfx_transfer.models.unknown_score`: 1 - cosine to the nearest of the
stored, float16, L2-normalised training features, Sun et al. 2022). For each: AUROC and
the false-positive rate at 95% TPR on the test images, and the share flagged at the
threshold chosen on the validation half. Temperature scaling (``tt.calibrate``'s fit on
the validation images): ECE before / after on the known test images. Cost: a batch of
images through the export's ``predict_pixels_uint8`` of the same model without and with
the unknown outputs (10 interleaved rounds; the least CPU time of the process per call, so other
jobs on the shared cores do not count, and the least wall time beside it).

Usage (from the repository root; the shared folders sit beside it)::

    python benchmarks/unknown_classes.py --image-size 128
    python benchmarks/unknown_classes.py --smoke   # seconds: generated images, the smoke
                                                   # modes' tiny backbone: runs, no figure
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
DEFAULT_DATA = SHARED / "datasets"
INSECTS = {"ant", "butterfly", "dragonfly", "mayfly", "tick", "scorpion"}
METHODS = ("msp", "energy", "mahalanobis", "knn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with caltech101/ and hymenoptera/")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "unknown_classes.jsonl"))
    p.add_argument("--plots", default=None, help="folder for unknown_<task>.png (the kNN score's "
                   "two histograms) and reliability_<task>.png (before/after temperature scaling)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.weights, args.image_size, args.epochs = None, None, _smoke.IMAGE_SIZE, 2
        args.json = os.path.join(tempfile.mkdtemp(), "unknown_classes.jsonl")
    return args


# -- data ---------------------------------------------------------------------------------


def _files(folder: Path, n: int | None = None) -> list[str]:
    files = sorted(str(p) for p in folder.iterdir() if not p.name.startswith("."))
    random.Random(folder.name).shuffle(files)
    return files[:n]


def real_tasks(data: Path, seed: int) -> dict:
    """``{task: {"classes", "train", "val", "test", "unknown"}}`` of ``(path, label)`` lists."""
    caltech, hym = data / "caltech101", data / "hymenoptera"
    for folder in (caltech, hym):
        if not folder.is_dir():
            raise SystemExit(f"{folder} is absent: this benchmark needs ../shared/datasets "
                             "(or --data); run --smoke for a check without it.")
    names = sorted(p.name for p in caltech.iterdir() if p.is_dir() and p.name not in INSECTS)
    random.Random(seed).shuffle(names)
    known_c, unknown_a, unknown_b = names[:10], names[10:30], names[30:40]
    hym_train = [(f, i) for i, c in enumerate(("ants", "bees")) for f in _files(hym / "train" / c)]
    hym_val = [(f, i) for i, c in enumerate(("ants", "bees")) for f in _files(hym / "val" / c)]
    random.Random(seed).shuffle(hym_val)
    half = len(hym_val) // 2
    known = [(c, _files(caltech / c, 40)) for c in known_c]
    return {
        "A": {"classes": ["ants", "bees"], "train": hym_train, "val": hym_val[:half],
              "test": hym_val[half:],
              "unknown": [(f, -1) for c in unknown_a for f in _files(caltech / c, 20)],
              "unknown_what": f"20 Caltech-101 categories x 20: {', '.join(unknown_a)}"},
        "B": {"classes": known_c,
              "train": [(f, i) for i, (_, fs) in enumerate(known) for f in fs[:20]],
              "val": [(f, i) for i, (_, fs) in enumerate(known) for f in fs[20:30]],
              "test": [(f, i) for i, (_, fs) in enumerate(known) for f in fs[30:40]],
              "unknown": [(f, -1) for f, _ in hym_val]
                         + [(f, -1) for c in unknown_b for f in _files(caltech / c, 20)],
              "unknown_what": f"hymenoptera val (153) + 10 Caltech-101 categories x 20: "
                              f"{', '.join(unknown_b)}"},
    }


def smoke_tasks(root: Path) -> dict:
    """Generated images: two coloured known classes vs striped unknown images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def write(name: str, n: int, label: int, kind: str) -> list:
        out = []
        for i in range(n):
            img = np.zeros((40, 40, 3), np.float32)
            if kind == "stripes":
                img[::4] = 255
            else:
                img[..., label] = 180
            img = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
            path = root / f"{name}_{i}.png"
            Image.fromarray(img).save(path)
            out.append((str(path), label))
        return out

    split = {s: write(f"{s}0", 4, 0, "plain") + write(f"{s}1", 4, 1, "plain")
             for s in ("train", "val", "test")}
    task = {"classes": ["red", "green"], **split, "unknown": write("unk", 6, -1, "stripes"),
            "unknown_what": "generated striped images"}
    return {"A": task}


def load_pixels(items: list, size: int):
    import numpy as np
    import tensorflow as tf

    from tfx_transfer.data.decode import decode_and_resize

    ds = tf.data.Dataset.from_tensor_slices([f for f, _ in items]).map(
        lambda f: decode_and_resize(tf.io.read_file(f), (size, size), False), num_parallel_calls=2)
    return np.stack(list(ds.as_numpy_iterator()))


# -- scores ---------------------------------------------------------------------------------


def train_head(features, labels, num_classes: int, epochs: int, seed: int):
    """The avg head's Dropout(0.2) -> Dense on cached pooled features: ``(kernel, bias)``."""
    import keras

    keras.utils.set_random_seed(seed)
    head = keras.Sequential([keras.Input((features.shape[1],)), keras.layers.Dropout(0.2),
                             keras.layers.Dense(num_classes)])
    head.compile(keras.optimizers.Adam(1e-3),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    head.fit(features, labels, epochs=epochs, batch_size=32, verbose=0)
    return [w for w in head.layers[-1].get_weights()]


def method_scores(feats: dict, labels, kernel, bias, references) -> dict:
    """``{method: {split: scores}}`` for the val, test and unknown features."""
    import numpy as np

    from tfx_transfer.evaluation.calibration import softmax
    from tfx_transfer.models.unknown_score import knn_score

    train = feats["train"]
    means = np.stack([train[labels == c].mean(0) for c in range(kernel.shape[1])])
    centred = train - means[labels]
    cov = centred.T @ centred / len(train)
    cov = 0.9 * cov + 0.1 * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)

    def logits(x):
        return x @ kernel + bias

    def mahalanobis(x):
        return np.min([np.einsum("nd,de,ne->n", x - m, precision, x - m) for m in means], axis=0)

    def lse(z):
        top = z.max(1, keepdims=True)
        return (top + np.log(np.exp(z - top).sum(1, keepdims=True)))[:, 0]

    score = {"msp": lambda x: 1 - softmax(logits(x)).max(1), "energy": lambda x: -lse(logits(x)),
             "mahalanobis": mahalanobis,
             "knn": lambda x: np.asarray(knn_score(x, references), np.float64)}
    return {m: {s: f(feats[s]) for s in ("val", "test", "unknown")} for m, f in score.items()}


def keras_cost(model, pixels, rounds: int = 3) -> dict:
    """ms per image in process (smoke mode: no export): ``predict_on_batch`` vs ``unknown_scores``."""
    import numpy as np

    import tfx_transfer as tt

    timings: dict[str, list] = {"plain": [], "unknown": []}
    for _ in range(rounds):
        start = time.perf_counter()
        model.predict_on_batch(pixels)
        timings["plain"].append(time.perf_counter() - start)
        start = time.perf_counter()
        tt.unknown_scores(model, pixels, batch_size=len(pixels))
        timings["unknown"].append(time.perf_counter() - start)
    out = {f"{k}_ms_per_image": round(1000 * min(v) / len(pixels), 3) for k, v in timings.items()}
    out["extra_cost"] = round(out["unknown_ms_per_image"] / out["plain_ms_per_image"] - 1, 4)
    out["statistics_bytes"] = int(np.prod(model.transfer_config["unknown"]["references"]["shape"]) * 2)
    out["in_process"] = True
    return out


def export_cost(model, pixels, rounds: int = 10) -> dict:
    """ms per image through the export's pixel signature, without and with the unknown outputs.

    Both exports are called in turn, ``rounds`` times; the figure is the least CPU time of
    this process per call (``time.process_time``: all its threads, not the other jobs on
    the shared cores), and the least wall time beside it.
    """
    import numpy as np
    import tensorflow as tf

    import tfx_transfer as tt

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = model.transfer_config.pop("unknown")
        plain = tt.load_exported(tt.export_saved_model(model, Path(tmp) / "plain"))
        model.transfer_config["unknown"] = settings
        scored = tt.load_exported(tt.export_saved_model(model, Path(tmp) / "scored"))
        batch = tf.constant(pixels)
        cpu: dict[str, list] = {"plain": [], "unknown": []}
        wall: dict[str, list] = {"plain": [], "unknown": []}
        for _ in range(rounds):
            for name, export in (("plain", plain), ("unknown", scored)):
                fn = export.saved_model.signatures["predict_pixels_uint8"]
                start_cpu, start = time.process_time(), time.perf_counter()
                result = fn(pixels=batch)
                cpu[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
        assert result["unknown_score"].shape == (len(pixels),)
        for name in cpu:
            out[f"{name}_ms_per_image"] = round(1000 * min(cpu[name]) / len(pixels), 3)
            out[f"{name}_wall_ms_per_image"] = round(1000 * min(wall[name]) / len(pixels), 3)
    out["extra_cost"] = round(out["unknown_ms_per_image"] / out["plain_ms_per_image"] - 1, 4)
    out["extra_cost_wall"] = round(out["unknown_wall_ms_per_image"] / out["plain_wall_ms_per_image"] - 1, 4)
    out["statistics_bytes"] = int(np.prod(settings["references"]["shape"]) * 2)
    return out


def run_task(name: str, task: dict, args: argparse.Namespace) -> dict:
    import keras
    import numpy as np

    import tfx_transfer as tt
    from tfx_transfer.evaluation.calibration import (
        expected_calibration_error,
        fit_temperature,
        fold_temperature,
        softmax,
    )
    from tfx_transfer.evaluation.unknown_detection import fpr_at_tpr, roc_auc, threshold_at_tpr
    from tfx_transfer.models.unknown_score import feature_model, set_references, unpack_array

    started = time.time()
    backbone = _smoke.register_backbone() if args.smoke else "mobilenet"
    model = tt.build_transfer_model(backbone, len(task["classes"]), input_shape=args.image_size,
                                    weights=args.weights, class_names=task["classes"])
    pixels = {s: load_pixels(task[s], args.image_size) for s in ("train", "val", "test", "unknown")}
    labels = {s: np.array([y for _, y in task[s]]) for s in ("train", "val", "test")}
    features = {s: np.concatenate([keras.ops.convert_to_numpy(
        feature_model(model).predict_on_batch(x[i:i + 32])[0]) for i in range(0, len(x), 32)])
        for s, x in pixels.items()}
    kernel, bias = train_head(features["train"], labels["train"], len(task["classes"]),
                              args.epochs, args.seed)
    model.get_layer("head").layers[-1].set_weights([kernel, bias])
    set_references(model, features["train"], threshold=2.0, labels=labels["train"])
    references = unpack_array(model.transfer_config["unknown"]["references"])
    scores = method_scores(features, labels["train"], kernel, bias, references)
    row = {"task": name, "image_size": args.image_size, "seed": args.seed,
           "known": task["classes"], "unknown": task["unknown_what"],
           "counts": {s: len(task[s]) for s in ("train", "val", "test", "unknown")}}
    for method, by_split in scores.items():
        threshold = threshold_at_tpr(by_split["val"], 0.95)
        row[method] = {"auroc": roc_auc(by_split["test"], by_split["unknown"]),
                       "fpr_at_95_tpr": fpr_at_tpr(by_split["test"], by_split["unknown"]),
                       "known_flagged": round(float((by_split["test"] > threshold).mean()), 4),
                       "unknown_flagged": round(float((by_split["unknown"] > threshold).mean()), 4)}
    logits = {s: features[s] @ kernel + bias for s in ("val", "test")}
    temperature = fit_temperature(logits["val"], labels["val"])
    row["accuracy"] = round(float((logits["test"].argmax(1) == labels["test"]).mean()), 4)
    row["temperature"] = round(temperature, 4)
    row["ece_before"] = expected_calibration_error(softmax(logits["test"]), labels["test"])
    row["ece_after"] = expected_calibration_error(softmax(logits["test"] / temperature), labels["test"])
    for key, t in (("nll_before", 1.0), ("nll_after", temperature)):
        p = softmax(logits["test"] / t)[np.arange(len(labels["test"])), labels["test"]]
        row[key] = round(float(-np.log(np.maximum(p, 1e-300)).mean()), 4)
    if args.plots:
        _plots(args.plots, name, scores["knn"], logits["test"], labels["test"], temperature)
    fold_temperature(model, temperature)
    model.transfer_config["unknown"]["threshold"] = threshold_at_tpr(scores["knn"]["val"], 0.95)
    row["cost"] = (keras_cost if args.smoke else export_cost)(model, pixels["test"][:32])
    row["seconds"] = round(time.time() - started, 1)
    return row


def _plots(folder: str, task: str, knn: dict, logits, labels, temperature: float) -> None:
    from tfx_transfer.evaluation.calibration import plot_reliability, softmax
    from tfx_transfer.evaluation.unknown_detection import plot_unknown_scores, threshold_at_tpr

    plot_unknown_scores(knn["test"], knn["unknown"], threshold_at_tpr(knn["val"], 0.95),
                        Path(folder) / f"unknown_{task}.png", title=f"Task {task}: kNN unknown score")
    plot_reliability({"before": (softmax(logits), labels),
                      "after": (softmax(logits / temperature), labels)},
                     Path(folder) / f"reliability_{task}.png", title=f"Task {task}: known test images")


def print_row(row: dict) -> None:
    print(f"\n== task {row['task']}: known {', '.join(row['known'])} ({row['counts']}); "
          f"unknown: {row['unknown']}")
    print(f"{'method':<12} {'AUROC':>6} {'FPR@95TPR':>9} {'known flagged':>13} {'unknown flagged':>15}")
    for method in METHODS:
        r = row[method]
        mark = "  (default)" if method == "knn" else ""
        print(f"{method:<12} {r['auroc']:>6.3f} {r['fpr_at_95_tpr']:>9.3f} {r['known_flagged']:>13.3f} "
              f"{r['unknown_flagged']:>15.3f}{mark}")
    cost = row["cost"]
    print(f"accuracy {row['accuracy']:.3f}; temperature {row['temperature']:.3f}: ECE "
          f"{row['ece_before']:.4f} before, {row['ece_after']:.4f} after; NLL {row['nll_before']:.4f} "
          f"before, {row['nll_after']:.4f} after (known test images)")
    wall = "" if "extra_cost_wall" not in cost else f" (wall time: {cost['extra_cost_wall']:+.1%})"
    print(f"{'in process' if cost.get('in_process') else 'export, CPU time'}, {row['image_size']} px: "
          f"{cost['plain_ms_per_image']:.2f} ms/image plain, {cost['unknown_ms_per_image']:.2f} with "
          f"the unknown score: extra cost {cost['extra_cost']:+.1%}{wall}; statistics "
          f"{cost['statistics_bytes'] / 1e3:.0f} kB; {row['seconds']} s")


@_smoke.eager_when_smoke
def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.smoke:
        tasks = smoke_tasks(Path(tempfile.mkdtemp()))
    else:
        if not Path(args.weights).is_file():
            raise SystemExit(f"{args.weights} is absent: this benchmark needs the ImageNet "
                             "MobileNet weights of ../shared/weights; run --smoke without them.")
        tasks = real_tasks(Path(args.data), args.seed)
    rows = []
    for name, task in tasks.items():
        rows.append(run_task(name, task, args))
        print_row(rows[-1])
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    return rows


if __name__ == "__main__":
    main()
