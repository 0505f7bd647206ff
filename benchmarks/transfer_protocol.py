"""Transfer without ImageNet, measured: pretrain on a source folder, transfer to a small target.

Protocol (settings chosen for the time budget before the full run; every number below is a flag):

1. Pretraining (once, cached): ``tfx_transfer.training.pretraining`` trains the backbone from
   random init on the source folder (default ``../shared/datasets/caltech101``,
   101 classes) with the kit's from-scratch recipe (AdamW 1e-3, weight decay
   0.05, 5% warmup + cosine, label smoothing 0.1, "standard" augmentation, 10%
   held out, BatchNorm momentum 0.9) for ``--pretrain-epochs`` (12) epochs at
   ``--image-size`` (64) px. The backbone and the decoded source images are
   cached in ``--cache-dir``; re-runs with the same settings reuse them
   (``--force-pretrain`` to redo the pretraining).
2. Target (default ``../shared/datasets/hymenoptera``: its ``train/`` and
   ``val/``; a folder without ``val/`` is split 75/25 once, seed 0). Two settings:
   all training images, and ``--shots`` (10) images per class drawn per seed.
   Every method is scored by accuracy on the whole target validation set:

   (a) scratch: the same backbone from random init, trained on the target alone
       with pretrain()'s from-scratch recipe (BatchNorm training, augmentation,
       BatchNorm statistics recomputed at the end);
   (b) frozen pretrained features + head: ``fine_tune(head_epochs=H,
       fine_tune_epochs=0)`` (head on cached features, Adam 1e-3, no augmentation);
   (c) two-phase fine-tuning: (b)'s model, then phase 2 of ``fine_tune``: the
       backbone's default blocks unfrozen (BatchNorm frozen), Adam
       ``--finetune-lr`` (1e-4), "standard" augmentation, F epochs;
   (d) joint training: (b)'s model, the same unfrozen blocks, optimizer and
       epochs as (c), but ``fit_joint``: loss L_target + 0.5 * L_source
       (``--loss-weight``), one
       source batch (augmented) per target batch, the source head initialised
       from pretraining;
   (e) ensemble of (b) and (c): mean of their probabilities.

   Epochs: scratch 30, head 20, fine-tuning 10, each raised so that it makes at
   least ``--min-steps`` (60) optimizer steps (10 images per class is one batch
   per epoch). Batch size 32. Pretraining runs once (seed 0); each seed redraws
   the 10-per-class subset, the initialisations and the data order.

Prints one table (mean +- std over seeds, then each seed's value).

Time, estimated from measured MobileNetV2 64 px step times on 2 free CPU cores
(0.25 s per training step of 32 images, ~30 s to compile each new model's train
function): about 30 minutes for the defaults -- pretraining ~10 min (12 x 169
steps, plus decoding the source once), then ~6 min per seed (24 model compiles
in all, a third of the target time). A re-run with the cached backbone: ~20 min.

Usage (from the repository root)::

    python benchmarks/transfer_protocol.py                  # the full protocol
    python benchmarks/transfer_protocol.py --smoke          # seconds: check that it runs
    python benchmarks/transfer_protocol.py --source DIR --target DIR --backbone vgg16 \\
        --image-size 64 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _smoke  # noqa: E402

DATASETS = ROOT / ".." / "shared" / "datasets"
PROTOCOL = "transfer-protocol-1"  # part of the pretraining cache key
METHODS = {
    "a": "(a) scratch",
    "b": "(b) frozen features + head",
    "c": "(c) two-phase fine-tuning",
    "d": "(d) joint source+target",
    "e": "(e) ensemble of (b)+(c)",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- folders: views of symlinks (never copies) -----------------------------------


def make_view(root: Path, splits: dict[str, list[tuple[str, int]]], class_names: list[str]) -> Path:
    """A folder ``root/{train,val}/<class>/`` of symlinks to the given ``(path, label)`` files."""
    for split, files in splits.items():
        for name in class_names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (path, label) in enumerate(files):
            link = root / split / class_names[label] / f"{i:05d}_{Path(path).name}"
            link.symlink_to(Path(path).resolve())
    return root


def per_class(files: list[tuple[str, int]], count: int | None, seed: int, what: str,
              class_names: list[str]) -> list[tuple[str, int]]:
    """``count`` files per class drawn with ``seed`` (all files when ``count`` is None)."""
    import numpy as np

    if count is None:
        return list(files)
    out = []
    for label, name in enumerate(class_names):
        pool = sorted(p for p, lab in files if lab == label)
        if len(pool) < count:
            raise SystemExit(f"{what}: class {name!r} has only {len(pool)} images; need {count}. "
                             "Lower --shots / --target-per-class.")
        pick = np.random.default_rng([seed, label]).choice(len(pool), count, replace=False)
        out += [(pool[i], label) for i in sorted(pick)]
    return out


def target_files(target: Path, image_size: int) -> tuple[dict, list[str]]:
    """The target's train/validation files: its own ``val/`` or a fixed 75/25 split."""
    from tfx_transfer.data.folder import load_image_folder

    folder = load_image_folder(target, image_size=image_size)
    if folder.validation is None:
        log(f"{target} has no val/: holding out 25% of each class (seed 0) for validation")
        folder = load_image_folder(target, image_size=image_size, validation_split=0.25, seed=0)
    return {"train": folder.files["train"], "val": folder.files["validation"]}, folder.class_names


def source_folder(args, tmp: Path) -> Path:
    """The source folder, or a symlink view of it for quick runs (--source-classes/-per-class)."""
    if args.source_classes is None and args.source_per_class is None:
        return args.source
    classes = sorted(p for p in args.source.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = classes[: args.source_classes] if args.source_classes else classes
    view = tmp / "source"
    for class_dir in classes:
        (view / class_dir.name).mkdir(parents=True)
        files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
        for path in files[: args.source_per_class]:
            (view / class_dir.name / path.name).symlink_to(path.resolve())
    return view


# -- pretraining (cached) ------------------------------------------------------------


def pretrained_backbone(args, source: Path) -> tuple[Path, dict, bool]:
    """Path of the pretrained backbone, its description, and whether it came from the cache."""
    from tfx_transfer.training.pretraining import pretrain, read_pretrain_info

    key = json.dumps([PROTOCOL, str(args.source.resolve()), args.source_classes,
                      args.source_per_class, args.backbone, args.image_size, args.pretrain_epochs,
                      args.batch_size])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = args.cache_dir / f"{args.backbone}-{args.image_size}px-{args.pretrain_epochs}ep-{digest}.weights.h5"
    if path.is_file() and not args.force_pretrain:
        log(f"pretrained backbone from the cache: {path} (--force-pretrain to redo)")
        return path, read_pretrain_info(path), True
    log(f"pretraining {args.backbone} at {args.image_size} px on {source} for "
        f"{args.pretrain_epochs} epoch(s) -> {path}")
    path = pretrain(source, args.backbone, path, image_size=args.image_size,
                    epochs=args.pretrain_epochs, batch_size=args.batch_size,
                    cache_images=args.cache_dir / "images", seed=0, verbose=2)
    return path, read_pretrain_info(path), False


def source_accuracy(info: dict) -> float:
    """Source validation accuracy of the saved backbone (after the BatchNorm recalibration)."""
    metrics = info["metrics"]
    return metrics.get("final_val_accuracy", metrics.get("val_accuracy", float("nan")))


# -- the five methods -------------------------------------------------------------------


def accuracy(model, dataset) -> float:
    """Top-1 accuracy of ``model`` on a dataset of ``(images, one-hot labels)``."""
    import numpy as np

    correct = total = 0
    for images, labels in dataset:
        probs = np.asarray(model.predict_on_batch(images))
        correct += int((probs.argmax(-1) == np.asarray(labels).argmax(-1)).sum())
        total += len(probs)
    return correct / total


def run_setting(args, view: Path, seed: int, weights: Path, info: dict, source_train) -> dict:
    """Train (a)-(e) on one target view; return {method: (accuracy, seconds)}."""
    import keras

    import tfx_transfer as tt
    from tfx_transfer.models.joint import fit_joint
    from tfx_transfer.training.scratch import (
        build_scratch_model,
        recalibrate_batchnorm,
        scratch_optimizer,
    )

    def load(augment):
        return tt.load_image_folder(view, image_size=args.image_size, batch_size=args.batch_size,
                                    seed=seed, label_mode="categorical", cache_images="memory",
                                    augmentation=augment, verify=False)

    plain, augmented = load(None), load("standard")
    batches = int(plain.train.cardinality())
    epochs = {name: max(value, math.ceil(args.min_steps / batches)) for name, value in
              (("scratch", args.scratch_epochs), ("head", args.head_epochs),
               ("finetune", args.finetune_epochs))}
    classes = plain.num_classes
    results: dict[str, tuple[float, float]] = {}

    def transfer_model():
        return tt.build_transfer_model(args.backbone, classes, input_shape=args.image_size,
                                       weights=weights, head="avg")

    def timed(key, train, model):
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        train()
        seconds = time.perf_counter() - start
        results[key] = (accuracy(model, plain.validation), seconds)
        log(f"    {METHODS[key]}: val accuracy {results[key][0]:.3f} ({seconds:.0f} s)")

    keras.utils.set_random_seed(seed)
    scratch = build_scratch_model(args.backbone, classes, input_shape=args.image_size, head="avg")
    steps = epochs["scratch"] * batches
    scratch.compile(optimizer=scratch_optimizer(steps),
                    loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                    metrics=["accuracy"])

    def train_scratch():
        scratch.fit(augmented.train, epochs=epochs["scratch"], verbose=0, shuffle=False)
        recalibrate_batchnorm(scratch, plain.train)  # as pretrain() does

    timed("a", train_scratch, scratch)

    keras.utils.set_random_seed(seed)
    frozen = transfer_model()
    timed("b", lambda: tt.fine_tune(frozen, plain.train, head_epochs=epochs["head"],
                                    fine_tune_epochs=0, head_lr=1e-3, verbose=0), frozen)

    tuned = transfer_model()
    tuned.set_weights(frozen.get_weights())
    timed("c", lambda: tt.fine_tune(tuned, augmented.train, head_epochs=0,
                                    fine_tune_epochs=epochs["finetune"], blocks="default",
                                    fine_tune_lr=args.finetune_lr, verbose=0), tuned)

    joint = transfer_model()
    joint.set_weights(frozen.get_weights())

    def train_joint():
        tt.unfreeze(joint, "default")
        fit_joint(joint, augmented.train, source_train, num_source_classes=info["num_classes"],
                  loss_weight=args.loss_weight, epochs=epochs["finetune"],
                  steps_per_epoch=batches, lr=args.finetune_lr, seed=seed,
                  source_head_weights=weights.with_name(info["files"]["head"]), verbose=0)

    timed("d", train_joint, joint)

    fused = tt.ensemble([frozen, tuned])
    timed("e", lambda: None, fused)
    keras.backend.clear_session()
    return results


# -- table ----------------------------------------------------------------------------------


def table(results: dict, settings: list[str], seeds: list[int]) -> str:
    import numpy as np

    head = "| method | " + " | ".join(settings) + " |"
    lines = [head, "|---" * (len(settings) + 1) + "|"]
    for key, label in METHODS.items():
        cells = []
        for setting in settings:
            accs = [results[setting][seed][key][0] for seed in seeds]
            per_seed = " / ".join(f"{a:.3f}" for a in accs)
            cells.append(f"{np.mean(accs):.3f} ± {np.std(accs):.3f} ({per_seed})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=None,
                   help="source folder of class folders (default ../shared/datasets/caltech101)")
    p.add_argument("--target", type=Path, default=None,
                   help="target folder: train/ + val/, or class folders (default hymenoptera)")
    p.add_argument("--backbone", default="mobilenetv2", help="mobilenetv2 (default), vgg16, resnet50, ...")
    p.add_argument("--image-size", type=int, default=64, help="square side in pixels (default 64)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shots", type=int, default=10, help="labelled target images per class (default 10)")
    p.add_argument("--pretrain-epochs", type=int, default=12)
    p.add_argument("--scratch-epochs", type=int, default=30)
    p.add_argument("--head-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--min-steps", type=int, default=60, help="fewest optimizer steps per phase")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--loss-weight", type=float, default=0.5, help="source-loss weight of (d)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--source-classes", type=int, default=None, help="use only the first N source classes")
    p.add_argument("--source-per-class", type=int, default=None, help="use only N images per source class")
    p.add_argument("--target-per-class", type=int, default=None,
                   help="cap the 'all images' setting at N training images per class")
    p.add_argument("--cache-dir", type=Path,
                   default=Path.home() / ".cache" / "tfx_transfer" / "transfer_protocol",
                   help="where the pretrained backbone is kept between runs")
    p.add_argument("--force-pretrain", action="store_true", help="pretrain again even if cached")
    p.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    p.add_argument("--smoke", action="store_true",
                   help="seconds: a check that everything runs, on data_samples/ (source: its "
                        "train/, target: all of it) with a tiny backbone at 32 px: up to 4 source classes x 6 images, "
                        "the few-shot setting only (shots 3), 1 epoch / 1 step per phase, seed 0, "
                        "pretrained afresh in a temporary folder")
    args = p.parse_args(argv)
    if args.smoke:
        args.source = args.source or _smoke.SAMPLES / "train"
        args.target = args.target or _smoke.SAMPLES
        args.source_classes, args.source_per_class, args.target_per_class = 4, 6, 6
        args.shots, args.seeds, args.min_steps, args.force_pretrain = 3, [0], 1, True
        args.pretrain_epochs = args.scratch_epochs = args.head_epochs = args.finetune_epochs = 1
        args.image_size, args.backbone = 32, _smoke.BACKBONE
    args.source = args.source or DATASETS / "caltech101"
    args.target = args.target or DATASETS / "hymenoptera"
    return args


@_smoke.eager_when_smoke
def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    for name, folder in (("--source", args.source), ("--target", args.target)):
        if not folder.is_dir():
            sys.exit(f"{name} folder {folder} not found. Pass {name} DIR (a folder of class folders); "
                     "the defaults are ../shared/datasets/caltech101 and ../shared/datasets/hymenoptera "
                     "(see ../shared/datasets/README.md).")
    command = "python benchmarks/transfer_protocol.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()

    import warnings

    import keras
    import tensorflow as tf

    from tfx_transfer.data.folder import load_image_folder

    tf.get_logger().setLevel("ERROR")  # retracing notices: every method builds new models
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")

    with tempfile.TemporaryDirectory(prefix="transfer_protocol_") as tmp:
        tmp = Path(tmp)
        if args.smoke:  # nothing kept from or for other runs
            args.cache_dir = tmp / "cache"
            _smoke.register_backbone()
        source = source_folder(args, tmp)
        weights, info, cached = pretrained_backbone(args, source)
        pretrain_note = "cached" if cached else f"pretraining {info['train_seconds'] / 60:.1f} min"
        log(f"source: {info['num_classes']} classes, {info['counts']}; pretraining "
            f"val accuracy {source_accuracy(info):.3f} ({pretrain_note})")
        source_train = load_image_folder(
            source, image_size=args.image_size, batch_size=args.batch_size, validation_split=0.1,
            seed=0, label_mode="categorical", cache_images=args.cache_dir / "images",
            augmentation="standard").train  # same split and image cache files as pretraining
        for _ in source_train:  # completes the cache if pretraining came from an older run
            pass

        files, class_names = target_files(args.target, args.image_size)
        full = per_class(files["train"], args.target_per_class, 0, "--target-per-class", class_names)
        settings = [f"all {len(full)} train images", f"{args.shots} per class"]
        if args.smoke:  # the few-shot setting only: the other one runs the same code on more files
            settings = settings[1:]
        results: dict = {setting: {} for setting in settings}
        for seed in args.seeds:
            for setting, train in ((f"all {len(full)} train images", full),
                                   (f"{args.shots} per class",
                                    per_class(files["train"], args.shots, seed, "--shots",
                                              class_names))):
                if setting not in results:
                    continue
                log(f"seed {seed}, {setting}:")
                view = make_view(tmp / f"target-{seed}-{len(train)}",
                                 {"train": train, "val": files["val"]}, class_names)
                results[setting][seed] = run_setting(args, view, seed, weights, info, source_train)

    minutes = (time.perf_counter() - started) / 60
    report = "\n".join([
        f"Transfer without ImageNet: {args.backbone} at {args.image_size} px, "
        f"pretrained {info['recipe']['epochs']} epochs on {args.source.name} "
        f"({info['num_classes']} classes, {info['counts'].get('train')} train images, "
        f"source val accuracy {source_accuracy(info):.3f}); "
        f"target {args.target.name} ({len(class_names)} classes, validation "
        f"{len(files['val'])} images). Target validation accuracy, mean ± std over seeds "
        f"{', '.join(map(str, args.seeds))} (per seed in brackets):",
        "",
        table(results, settings, args.seeds),
        "",
        f"command: {command}",
        f"total {minutes:.1f} min ({pretrain_note}), "
        f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPU(s) visible",
    ])
    print(report)
    if args.json:
        args.json.write_text(json.dumps({
            "command": command, "args": {k: str(v) for k, v in vars(args).items()},
            "pretraining": info, "results": {s: {str(k): v for k, v in r.items()} for s, r in results.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
