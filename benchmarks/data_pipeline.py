"""Input-pipeline throughput: tfx_transfer's tf.data pipeline vs the legacy ImageDataGenerator.

Both read the same folder of real photos, decode, resize to 224 px and apply the
same augmentation (rotation 20 deg, shifts 0.1, zoom 0.15, horizontal flip),
in batches of 32, on the same CPU cores. Nothing is trained: the figure is
images per second delivered by the pipeline.

* legacy: ``keras.src.legacy.preprocessing.image.ImageDataGenerator(...)
  .flow_from_directory`` (bilinear resize), timed after 2 warm-up batches;
* ours, streaming: ``load_image_folder(..., augmentation=...)`` with no cache
  (decode + resize + augment every epoch), timed after 2 warm-up batches;
* ours, cached (steady state): ``cache_images="memory"``; one full epoch fills the
  cache (its rate is printed too), then batches are timed: images are decoded
  once at the target size and only the batched augmentation runs per epoch.
  Two rows share that cache: ``Augmentation(engine="affine")`` (the default,
  one resampling) and ``engine="keras"`` (the stock RandomRotation ->
  RandomTranslation -> RandomZoom -> RandomFlip chain, one resampling per op).

Per CPU core (``--per-core``; issue 18: can the host feed an accelerator?): the
process is pinned to one core (``os.sched_setaffinity``, as ``taskset -c 0``) and
TensorFlow and tf.data get one thread each, then two paths are timed at 224 px:

* stream: JPEG decode + resize + augmentation on the CPU, every epoch;
* cached: decoded uint8 images cached in memory (one untimed epoch fills it),
  augmentation inside the model (on the accelerator): the host only shuffles,
  batches and hands over uint8 batches, which is all that is timed.

Two figures per path: wall-clock images/s on the pinned core, and images per
CPU-second of the whole process (``time.process_time``), which does not depend on
how busy the shared core is; cores needed for 3,000 img/s are computed from the
latter (and printed for both).

Usage (from the repository root; needs scipy for the legacy generator)::

    python benchmarks/data_pipeline.py                      # ../shared/datasets/caltech101
    python benchmarks/data_pipeline.py --data DIR --batches 50 --images 1000
    python benchmarks/data_pipeline.py --per-core --images 1000 --batches 30
    python benchmarks/data_pipeline.py --smoke [--per-core]   # seconds, data_samples/ at 32 px
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _smoke  # noqa: E402

DEFAULT_DATA = ROOT / ".." / "shared" / "datasets" / "caltech101"
IDG_KWARGS = dict(
    rotation_range=20, width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.15, horizontal_flip=True
)


def subset_folder(data: Path, images: int | None, tmp: str) -> Path:
    """``data`` itself, or a folder of symlinks to about ``images`` files spread over the classes."""
    if not images:
        return data
    classes = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = max(1, images // len(classes))
    out = Path(tmp) / "subset"
    for class_dir in classes:
        (out / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            (out / class_dir.name / path.name).symlink_to(path.resolve())
    return out


def rate(batches, n_batches: int, warmup: int = 2) -> float:
    """Images per second over ``n_batches`` after ``warmup`` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    count, start = 0, time.perf_counter()
    for _ in range(n_batches):
        count += len(next(it)[0])
    return count / (time.perf_counter() - start)


def rate_and_cpu(batches, n_batches: int, warmup: int = 2) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process) over ``n_batches``."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        count += len(next(it)[0])
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def per_core(data: Path, size: int, batch_size: int, n_batches: int, target: float = 3000.0) -> dict:
    """Images/s per CPU core of the streaming and cached input paths (see the module docstring)."""
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        return _per_core_pinned(data, size, batch_size, n_batches, target, core)
    finally:  # the process's cores come back (the tests run --per-core in their process)
        os.sched_setaffinity(0, before)


def _per_core_pinned(data: Path, size: int, batch_size: int, n_batches: int, target: float,
                     core: int) -> dict:
    import tensorflow as tf

    from tfx_transfer import Augmentation, load_image_folder

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.cpu_budget = 1
    results = {}
    stream = load_image_folder(data, (size, size), batch_size, augmentation=Augmentation(**IDG_KWARGS),
                               cache_images=None)
    results["stream: decode + resize + augment on the CPU"] = rate_and_cpu(
        stream.train.repeat().with_options(options), n_batches)
    cached = load_image_folder(data, (size, size), batch_size, cache_images="memory")
    train = cached.train.with_options(options)
    for _ in train:  # one untimed epoch fills the cache
        pass
    results["cached: uint8 batches from memory (augment on the accelerator)"] = rate_and_cpu(
        train.repeat(), n_batches)
    threads = ("1 TensorFlow/tf.data thread" if one_tensorflow_thread() else
               "1 tf.data thread; TensorFlow's pools left as they were: it ran before --per-core")
    print(f"per core (pinned to CPU {core}, {threads}), {size} px, batch {batch_size}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:")
    for name, (wall, cpu) in results.items():
        print(f"  {name:66s} {wall:8.1f} img/s wall, {cpu:8.1f} img per CPU-second -> "
              f"{target / cpu:6.1f} cores for {target:,.0f} img/s ({target / wall:.1f} at the wall rate)")
    return results


def one_tensorflow_thread() -> bool:
    """Whether TensorFlow's inter- and intra-op pools are one thread each (``--per-core``)."""
    import tensorflow as tf

    return (tf.config.threading.get_inter_op_parallelism_threads() == 1
            and tf.config.threading.get_intra_op_parallelism_threads() == 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class folders")
    parser.add_argument("--batches", type=int, default=100, help="timed batches per pipeline")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=None, help="use only about this many images (quick runs)")
    parser.add_argument("--per-core", action="store_true",
                        help="only the per-core figures of the streaming and cached paths")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: data_samples/ at 32 px, batches of 8, 2 timed batches "
                        "(checks that it runs; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.data, args.size, args.batch_size, args.batches, args.images = \
            _smoke.SAMPLES / "train", 32, 8, 2, None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.data.is_dir():
        sys.exit(
            f"Image folder {args.data} not found. Pass --data DIR (a folder of class folders); the default "
            "is the Caltech-101 sample in ../shared/datasets/caltech101 (see its README)."
        )

    import tensorflow as tf

    if args.per_core:
        try:  # before TensorFlow starts: a fresh process (the command line)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.config.threading.set_intra_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already initialised in this process (tests): leave it
            pass
        with tempfile.TemporaryDirectory() as tmp:
            per_core(subset_folder(args.data.resolve(), args.images, tmp), args.size,
                     args.batch_size, args.batches)
        return
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    from tfx_transfer import Augmentation, load_image_folder

    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        data = subset_folder(args.data.resolve(), args.images, tmp)
        print(f"data: {data if not args.images else f'{args.data} (~{args.images} images)'}; "
              f"{args.size} px, batch {args.batch_size}, {os.cpu_count()} CPU cores; augmentation {IDG_KWARGS}")

        legacy = ImageDataGenerator(**IDG_KWARGS).flow_from_directory(
            data, target_size=size, batch_size=args.batch_size, class_mode="sparse",
            interpolation="bilinear", seed=0,
        )
        legacy_rate = rate(legacy, args.batches)
        print(f"legacy ImageDataGenerator.flow_from_directory: {legacy_rate:8.1f} images/s")

        aug = Augmentation(**IDG_KWARGS)
        streaming = load_image_folder(data, size, args.batch_size, augmentation=aug, cache_images=None)
        stream_rate = rate(streaming.train.repeat(), args.batches)
        print(f"tfx_transfer, streaming (no cache):            {stream_rate:8.1f} images/s "
              f"({stream_rate / legacy_rate:.1f}x)")

        cached = load_image_folder(data, size, args.batch_size, cache_images="memory")  # augmented below, per engine
        start, n = time.perf_counter(), 0
        for images, _ in cached.train:  # first epoch: decode + fill the cache
            n += len(images)
        print(f"tfx_transfer, first epoch (fills the cache):   {n / (time.perf_counter() - start):8.1f} images/s")
        steady = {}
        for engine, label in (("affine", "engine='affine'"), ("keras", "engine='keras' chain")):
            train = Augmentation(**IDG_KWARGS, engine=engine).map_dataset(cached.train.repeat())
            steady[engine] = rate(train.prefetch(tf.data.AUTOTUNE), args.batches)
            print(f"tfx_transfer, cached, {label + ':':26s}{steady[engine]:8.1f} images/s")
        print(f"ratio (cached steady state / legacy): {steady['affine'] / legacy_rate:.1f}x with engine='affine', "
              f"{steady['keras'] / legacy_rate:.1f}x with engine='keras'   "
              f"(streaming / legacy: {stream_rate / legacy_rate:.1f}x)")


if __name__ == "__main__":
    main()
