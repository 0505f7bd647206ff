"""Size, one-thread CPU latency and accuracy of every export format, side by side, on real photos.

One model, trained here: ImageNet MobileNet v1 (``../shared/weights``) with a new avg
head trained for a few epochs on cached features (backbone frozen), on
``../shared/datasets/hymenoptera`` (245 train / 153 val). Then the same model as:

* the Keras model and the SavedModel (``export_saved_model``, ``predict_pixels`` signature);
* TFLite float32, float16, dynamic-range and full-integer int8 (``export_tflite``;
  int8 calibrated on ``--calibration-images`` training images, uint8 in and out);
* ONNX (``export_onnx``), run with onnxruntime.

Each is scored on the validation images (accuracy, top-1 agreement with Keras, largest
probability difference) through the kit's own checks, and timed on one image at a time
on one CPU thread (median of ``--runs`` calls after 5 warm-up calls; TensorFlow's
intra/inter-op pools, LiteRT's ``num_threads`` and onnxruntime's ``intra_op_num_threads``
all set to 1). Goals (issue 26): int8 within 1 point of float32's accuracy, at most 30% of
its size and faster; ONNX within 1e-4 of Keras and 100% top-1 agreement.

Usage (from the repository root)::

    python benchmarks/export_formats.py                   # hymenoptera, 224 px
    python benchmarks/export_formats.py --image-size 160
    python benchmarks/export_formats.py --smoke           # seconds: data_samples/, tiny backbone,
                                                          # float32 and int8 TFLite only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _smoke  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"
RESULTS = ROOT / "benchmarks" / "results" / "export_formats.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's initialisation and training")
    parser.add_argument("--runs", type=int, default=50, help="timed single-image calls per format")
    parser.add_argument("--json", default=str(RESULTS), help="JSON lines file to append to")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: data_samples/, a tiny random backbone, 32 px (checks that "
                        "it runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    args.backbone = "mobilenet"
    if args.smoke:
        args.data, args.weights, args.backbone = str(_smoke.SAMPLES), None, _smoke.BACKBONE
        args.image_size, args.head_epochs, args.calibration_images, args.runs = 32, 1, 16, 5
        args.json = None
    return args


def one_thread() -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised in this process (tests): leave it
        pass


def latency_ms(call, image, runs: int) -> float:
    for _ in range(5):
        call(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def train_model(args: argparse.Namespace):
    import keras

    import tfx_transfer as tt

    if args.smoke:
        _smoke.register_backbone()
    elif not Path(args.data).is_dir() or not Path(args.weights).is_file():
        sys.exit(f"export_formats: {args.data} or {args.weights} is absent (they live in "
                 "../shared beside the repository); use --smoke to check the script.")
    keras.utils.set_random_seed(args.seed)
    data = tt.load_image_folder(args.data, image_size=args.image_size, batch_size=32,
                                cache_images="memory", seed=args.seed)
    model = tt.build_transfer_model(args.backbone, data.num_classes,
                                    input_shape=(args.image_size, args.image_size, 3),
                                    weights=args.weights, head="avg", augmentation="none",
                                    class_names=data.class_names)
    tt.fine_tune(model, data.train, data.validation, head_epochs=args.head_epochs,
                 fine_tune_epochs=0, verbose=0)
    return model, data


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per format: size, latency, accuracy and agreement (exports in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="export_formats_") as tmp:
        return _measure_in(args, Path(tmp))


def _measure_in(args: argparse.Namespace, tmp: Path) -> list[dict]:
    import numpy as np
    import onnxruntime
    import tensorflow as tf

    import tfx_transfer as tt
    from tfx_transfer.export.tflite_runtime import TFLiteModel

    model, data = train_model(args)
    image = next(iter(data.validation))[0][:1].numpy().astype(np.float32)
    rows = []
    export = tt.export_saved_model(model, tmp / "export", data.class_names)
    served = tf.saved_model.load(str(export)).signatures["predict_pixels"]
    saved_ms = latency_ms(lambda x: served(pixels=tf.constant(x)), image, args.runs)
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in data.validation))
    x_val, y_val = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    expected = model.predict(x_val, verbose=0)
    got = np.concatenate([served(pixels=tf.constant(x_val[i:i + 32]))["probabilities"].numpy()
                          for i in range(0, len(x_val), 32)])
    rows.append({"format": "SavedModel", "size_mb": folder_size(export) / 1e6,
                 "latency_ms": saved_ms, "accuracy": float(np.mean(got.argmax(1) == y_val)),
                 "top1_agreement": float(np.mean(got.argmax(1) == expected.argmax(1))),
                 "max_abs_diff": float(np.abs(got - expected).max()), "num_images": len(y_val)})
    # --smoke: float32 and int8 only (the same code path; seconds matter in the test suite)
    for quantization in (None, "int8") if args.smoke else (None, "float16", "dynamic", "int8"):
        name = f"tflite {quantization or 'float32'}"
        start = time.perf_counter()
        report = tt.export_tflite(model, tmp / f"{quantization}.tflite", quantization=quantization,
                                  representative_data=data, validation_data=data,
                                  calibration_images=args.calibration_images,
                                  min_agreement=0, tolerance=1.0)  # measure, never refuse
        seconds = time.perf_counter() - start
        runner = TFLiteModel(report["path"], num_threads=1)
        rows.append({"format": name, "size_mb": report["size_bytes"] / 1e6,
                     "latency_ms": latency_ms(runner.probabilities, image, args.runs),
                     "accuracy": report["accuracy"], "top1_agreement": report["top1_agreement"],
                     "max_abs_diff": report["max_abs_diff"], "export_s": round(seconds, 1),
                     "runtime": report["runtime"], "num_images": report["num_samples"]})
        keras_acc = report["keras_accuracy"]
    onnx = tt.export_onnx(model, tmp / "model.onnx", validation_data=data, min_agreement=0,
                          tolerance=1.0)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx["path"], options,
                                           providers=["CPUExecutionProvider"])
    rows.insert(0, {"format": "Keras (reference)", "size_mb": float("nan"),
                    "latency_ms": latency_ms(lambda x: model(x, training=False), image, args.runs),
                    "accuracy": keras_acc, "top1_agreement": 1.0, "max_abs_diff": 0.0})
    rows.append({"format": "ONNX (onnxruntime)", "size_mb": onnx["size_bytes"] / 1e6,
                 "latency_ms": latency_ms(lambda x: session.run(None, {"pixels": x}), image,
                                          args.runs),
                 "accuracy": onnx["accuracy"], "top1_agreement": onnx["top1_agreement"],
                 "max_abs_diff": onnx["max_abs_diff"], "num_images": onnx["num_samples"]})
    return rows


@_smoke.eager_when_smoke
def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    one_thread()
    start = time.perf_counter()
    if args.smoke:  # 8 + 4 images per class: one batch each
        with tempfile.TemporaryDirectory() as tmp:
            args.data = str(_smoke.samples(tmp))
            rows = measure(args)
    else:
        rows = measure(args)
    print(f"export formats: {args.backbone}, {args.image_size} px, {Path(args.data).name}, "
          f"seed {args.seed}, head {args.head_epochs} epochs, calibration {args.calibration_images} images, "
          f"one CPU thread, batch 1, median of {args.runs}")
    print("| format | size (MB) | latency (ms) | accuracy | top-1 agreement | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['format']} | {row['size_mb']:.2f} | {row['latency_ms']:.2f} | "
              f"{row['accuracy']:.4f} | {row['top1_agreement']:.4f} | {row['max_abs_diff']:.2g} |")
    by = {row["format"]: row for row in rows}
    f32, i8 = by["tflite float32"], by["tflite int8"]
    print(f"int8 vs float32: accuracy {100 * (i8['accuracy'] - f32['accuracy']):+.1f} points, "
          f"size {i8['size_mb'] / f32['size_mb']:.0%}, latency x{i8['latency_ms'] / f32['latency_ms']:.2f}")
    if args.json:
        record = {"settings": {k: v for k, v in vars(args).items() if k != "json"},
                  "rows": rows, "wall_s": round(time.perf_counter() - start, 1),
                  "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")
    return rows


if __name__ == "__main__":
    main()
