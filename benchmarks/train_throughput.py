"""Training throughput (images/s) of phase 1 (frozen base) and phase 2 (top blocks unfrozen).

Measures the model, not the input pipeline: one batch of random uint8 pixels is
made once in memory and fed again at every step (a ``keras.utils.PyDataset``; a
``tf.data`` ``from_tensors(...).repeat()`` on TensorFlow). Per phase: compile,
``--warmup`` steps (tracing, XLA compilation), then ``--steps`` timed steps in one
epoch (the epoch's end waits for the device, so the time covers all the work).

* phase 1: the model of :func:`tfx_transfer.build_transfer_model` as built (the
  backbone frozen, the head trained);
* phase 2: :func:`tfx_transfer.unfreeze` of ``--blocks`` (default: the
  backbone's default top blocks, ``conv5`` for ResNet50, ``block5`` for VGG16),
  recompiled: what :class:`tfx_transfer.StagedUnfreeze` trains after its switch.

The implied arithmetic rate uses the published forward cost of one 224 px image
(ResNet50 8.2 GFLOP = 4.1 G multiply-adds, VGG16 31 GFLOP), scaled by
``(size / 224)**2``: phase 1 costs a forward pass plus the head's training, phase 2
is counted as 3x the forward pass (the usual training convention; with only the
top blocks unfrozen the real backward pass is shorter, so phase 2's fraction of
peak is an upper bound). The fraction of peak uses ``--peak-tflops`` or, for a
known GPU, its dense tensor-core peak at the chosen precision; on a CPU without
``--peak-tflops`` it prints n/a.

Usage (from the repository root)::

    # a GPU through Keras on JAX (pip install "jax[cuda12]" keras; no TensorFlow needed)
    python benchmarks/train_throughput.py --backend jax --precision mixed_bfloat16 \\
        --batch-size 128 256 512 --steps 50 --json throughput.jsonl
    # the prepared one-call run for a lent H100/H200: benchmarks/gpu_throughput.sh
    # quick CPU check
    python benchmarks/train_throughput.py --image-size 96 --batch-size 8 --steps 3 --warmup 1
    # seconds: checks that it runs (also: EXTRA=--smoke bash benchmarks/gpu_throughput.sh)
    python benchmarks/train_throughput.py --smoke
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

# Forward GFLOP of one 224x224 image (2 x multiply-adds), include_top=False.
FORWARD_GFLOP_224 = {"resnet50": 8.2, "vgg16": 31.0}

# Dense (no sparsity) peak TFLOP/s: (name fragment, 16-bit tensor cores, float32 via TF32).
# First match wins, so more specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 418.0),
    ("H100", 989.0, 495.0),   # SXM
    ("H200", 989.0, 495.0),
    ("A100", 312.0, 156.0),
    ("L4", 121.0, 60.0),
    ("V100", 125.0, 15.7),    # no TF32: float32 is plain FP32
)

REFERENCES = (
    ("resnet50", "2,375 img/s", "NVIDIA's TensorFlow example, A100, AMP + XLA, batch 256"),
    ("resnet50", "2,600-2,800 img/s", "PyTorch, H100 SXM, fp16"),
    ("vgg16", "1,190 img/s", "TensorFlow, A100, fp16"),
)
TARGET = "ResNet50 phase 2 >= 3,000 img/s on one H100 with bf16"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", action="append",
                        help="registry name; repeat for several (default: resnet50 and vgg16)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64],
                        help="one or more batch sizes: several make a sweep (e.g. 64 128 256)")
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per phase first")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                        help="XLA-compile the train step (compile(jit_compile=...)); JAX always "
                        "compiles")
    parser.add_argument("--phase", choices=("1", "2", "both"), default="both")
    parser.add_argument("--blocks", default="default",
                        help="blocks unfrozen in phase 2 (any unfreeze() form; default: the "
                        "backbone's default)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--head", default="avg", choices=("avg", "max", "flatten"))
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s at this precision (default: known GPUs)")
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="sets KERAS_BACKEND (default: the environment's, else tensorflow)")
    parser.add_argument("--json", default=None,
                        help="also append one JSON line per measurement here (device, backbone, "
                        "image_size, phase, precision, batch_size, images_per_second, "
                        "fraction_of_peak, ...)")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: a tiny backbone instead of --backbone, 32 px, batch 2, 1 "
                        "warm-up and 1 timed step, 10 classes, no XLA and no tracing (run_eagerly) on "
                        "TensorFlow (checks that it runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.batch_size, args.steps, args.warmup = 32, [2], 1, 1
        args.num_classes, args.jit, args.backbone = 10, False, [_smoke.BACKBONE]
    return args


def device_name() -> str:
    """The accelerator the backend computes on (its marketing name), or the CPU's."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.device_kind} ({len(jax.devices())} visible, 1 used)"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"{details.get('device_name', 'GPU')} ({len(gpus)} visible, 1 used)"
    cpu = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores)"


def peak_tflops(device: str, precision: str, given: float | None) -> float | None:
    """``given``, else the table's peak for ``device`` at ``precision``, else None."""
    if given is not None:
        return given
    if device.startswith("cpu"):
        return None
    for fragment, half, single in PEAK_TFLOPS:
        if fragment.lower() in device.lower():
            return single if precision == "float32" else half
    return None


def gflop_per_image(backbone: str, size: int, phase: int, head_params: int) -> float | None:
    """Training GFLOP per image: phase 1 = forward + head training, phase 2 = 3x forward + head."""
    forward = FORWARD_GFLOP_224.get(backbone)
    if forward is None:
        return None
    forward *= (size / 224) ** 2
    head = 6 * head_params / 1e9  # forward + two backward products per weight
    return (forward if phase == 1 else 3 * forward) + head


def _data(batch: int, size: int, classes: int, steps: int):
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    y = (np.arange(batch) % classes).astype("int32")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.data.Dataset.from_tensors((x, y)).repeat(steps)

    class SameBatch(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, index):
            return x, y

    return SameBatch()


def epoch_timer():
    """A Keras callback whose ``seconds`` is the last epoch's time, once the device finished."""
    import keras
    import numpy as np

    class EpochTimer(keras.callbacks.Callback):
        seconds = float("nan")

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            for value in (logs or {}).values():  # waits for the last step's results
                np.asarray(value)
            self.seconds = time.perf_counter() - self.start

    return EpochTimer()


def run_phase(model, batch_size: int, args) -> float:
    """Compile, warm up, time ``args.steps`` steps of ``batch_size``; returns images/s."""
    import keras

    # --smoke on TensorFlow: steps run eagerly (tracing a step costs more than a smoke run's two)
    eager = args.smoke and keras.backend.backend() == "tensorflow"
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy",
                  jit_compile=args.jit, run_eagerly=eager)
    size = args.image_size
    model.fit(_data(batch_size, size, args.num_classes, args.warmup), epochs=1,
              shuffle=False, verbose=0)
    timer = epoch_timer()
    model.fit(_data(batch_size, size, args.num_classes, args.steps), epochs=1,
              shuffle=False, verbose=0, callbacks=[timer])
    return args.steps * batch_size / timer.seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras

    import tfx_transfer as tt

    if args.smoke:
        _smoke.register_backbone()
    precision = tt.set_precision(args.precision)
    device = device_name()
    peak = peak_tflops(device, precision, args.peak_tflops)
    print(f"backend={keras.backend.backend()} device={device} precision={precision} "
          f"jit_compile={args.jit} batch={args.batch_size} image={args.image_size}px "
          f"steps={args.steps} (+{args.warmup} warm-up) peak="
          f"{'n/a' if peak is None else f'{peak:g} TFLOP/s'}")
    phases = (1, 2) if args.phase == "both" else (int(args.phase),)
    for backbone in args.backbone or ["resnet50", "vgg16"]:
        keras.utils.set_random_seed(0)
        model = tt.build_transfer_model(backbone, args.num_classes, input_shape=args.image_size,
                                        weights=None, head=args.head)
        head_params = sum(int(w.numpy().size) for w in tt.get_head(model).trainable_weights)
        for phase in phases:
            what = "frozen base"
            if phase == 2:
                layers = tt.unfreeze(model, args.blocks)
                blocks = (", ".join(tt.get_backbone(backbone).default_unfreeze)
                          if args.blocks == "default" else args.blocks)
                what = f"{blocks} unfrozen, {len(layers)} layers"
            gflop = gflop_per_image(tt.get_backbone(backbone).name, args.image_size, phase,
                                    head_params)
            for batch_size in args.batch_size:
                rate = run_phase(model, batch_size, args)
                tflops = None if gflop is None else rate * gflop / 1e3
                fraction = None if tflops is None or peak is None else tflops / peak
                print(f"{backbone:>10} phase {phase} ({what}) batch {batch_size}: {rate:.1f} img/s, "
                      f"{'n/a' if tflops is None else f'{tflops:.2f}'} TFLOP/s, "
                      f"{'n/a' if fraction is None else f'{100 * fraction:.1f}%'} of peak",
                      flush=True)
                if args.json:
                    record = dict(device=device, backbone=backbone, image_size=args.image_size,
                                  phase=phase, precision=precision, batch_size=batch_size,
                                  images_per_second=rate, fraction_of_peak=fraction,
                                  tflops=tflops, peak_tflops=peak, unfrozen=what,
                                  backend=keras.backend.backend(), jit_compile=args.jit,
                                  steps=args.steps, warmup=args.warmup)
                    with open(args.json, "a") as f:
                        f.write(json.dumps(record) + "\n")
    print("\nPublished single-GPU training rates (all layers trained, 224 px) for comparison:")
    for backbone, rate, where in REFERENCES:
        print(f"  {backbone:>10}: {rate:>18}  {where}")
    print(f"  target: {TARGET}")
    print("  (phase 2 trains only the top blocks, so it does less work per image than those.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
