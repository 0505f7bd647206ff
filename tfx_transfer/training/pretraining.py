"""Source-task pretraining: train a registry backbone from random init, save it for transfer.

When ImageNet weights cannot or may not be used, train the backbone on a large
labelled *source* folder from your own domain, then transfer it to the small
*target* task with ``build_transfer_model(backbone, ..., weights=PATH)``.

The from-scratch recipe (all defaults, all overridable):

* the whole backbone trains, and its BatchNormalization layers run in training
  mode (batch statistics; moving averages updated) -- unlike
  :func:`~tfx_transfer.build_transfer_model`, which calls the backbone with
  ``training=False`` for transfer -- with BatchNorm momentum 0.9 so the moving
  averages keep up in short runs (see
  :func:`~tfx_transfer.training.scratch.build_scratch_model`);
* ``Augmentation(preset="standard")`` on the training batches (tf.data side);
* cross-entropy with ``label_smoothing=0.1``;
* ``AdamW`` (``learning_rate=1e-3``, decoupled ``weight_decay=0.05`` on kernels
  only: biases and BatchNormalization gamma/beta are not decayed), with a linear
  warmup over the first 5% of the steps and cosine decay to 0 afterwards
  (:func:`~tfx_transfer.training.scratch.scratch_optimizer`);
* head ``"avg"`` (global average pooling -> Dropout(0.2) -> Dense softmax);
* after training, the BatchNorm moving statistics are recomputed on 100
  un-augmented training batches
  (:func:`~tfx_transfer.training.scratch.recalibrate_batchnorm`);
* 10% of each class held out for validation (``validation_split=0.1``), unless
  the folder has its own ``val/`` (then pass ``validation_split=None``).

Files written (``out_path`` a folder, or a ``*.weights.h5`` file name)::

    <name>.weights.h5        the backbone (saved with backbone.save_weights)
    <name>.head.weights.h5   the source classifier head (for joint training)
    <name>.json              backbone, image size, classes, recipe, metrics, versions

Each file is written under a temporary name and renamed into place, so a crash
never leaves a half-written one. Pretraining from scratch is long: pass
``backup_dir=`` (CLI: ``--resume``) so that an interrupted run continues from its
last finished epoch.

Example: see :func:`pretrain` (one run, its files listed, the weights loaded).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from tfx_transfer.defaults import DEFAULT_SEED
from tfx_transfer.models.backbones import get_backbone
from tfx_transfer.models.batchnorm import batchnorm_layers
from tfx_transfer.models.transfer_model import get_backbone_model, get_head, transfer_config
from tfx_transfer.training.scratch import (
    build_scratch_model,
    recalibrate_batchnorm,
    scratch_optimizer,
)

WEIGHTS_SUFFIX = ".weights.h5"
HEAD_SUFFIX = ".head.weights.h5"
INFO_SUFFIX = ".json"


def output_paths(out_path: str | os.PathLike, backbone: str) -> dict[str, Path]:
    """Where :func:`pretrain` writes: ``{"weights", "head", "info"}`` paths.

    ``out_path`` ending in ``.weights.h5`` names the weights file; anything else is
    a folder that receives ``<backbone>.weights.h5`` and its companions.

    Example:
        >>> output_paths("runs/src", "vgg16")["weights"].as_posix()
        'runs/src/vgg16.weights.h5'
        >>> output_paths("runs/xray.weights.h5", "vgg16")["info"].as_posix()
        'runs/xray.json'
    """
    out = Path(out_path)
    if out.name.endswith(WEIGHTS_SUFFIX):
        stem = out.name[: -len(WEIGHTS_SUFFIX)]
        folder = out.parent
    else:
        if out.suffix and not out.is_dir():
            raise ValueError(
                f"out_path={str(out)!r}: Keras saves weights only to names ending in "
                f"{WEIGHTS_SUFFIX!r}; pass e.g. {str(out.with_suffix(''))!r}{WEIGHTS_SUFFIX} or a folder."
            )
        stem, folder = get_backbone(backbone).name, out
    return {
        "weights": folder / f"{stem}{WEIGHTS_SUFFIX}",
        "head": folder / f"{stem}{HEAD_SUFFIX}",
        "info": folder / f"{stem}{INFO_SUFFIX}",
    }


def read_pretrain_info(path: str | os.PathLike) -> dict:
    """The JSON :func:`pretrain` wrote next to a weights file (pass either file).

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())  # as pretrain(..., out=folder) leaves it
        >>> _ = (folder / "vgg16.json").write_text(json.dumps({"backbone": "vgg16"}))
        >>> read_pretrain_info(folder / "vgg16.weights.h5")["backbone"]
        'vgg16'
    """
    path = Path(path)
    if path.name.endswith(WEIGHTS_SUFFIX):
        name = path.name[: -len(WEIGHTS_SUFFIX)]
        if name.endswith(".head"):
            name = name[: -len(".head")]
        path = path.with_name(name + INFO_SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(
            f"No pretraining description {str(path)!r}; tfx_transfer.training.pretraining writes it next "
            "to the weights file (<name>.json)."
        )
    return json.loads(path.read_text())


def _backup(backup_dir: str | os.PathLike | None) -> list[keras.callbacks.Callback]:
    return [] if backup_dir is None else [keras.callbacks.BackupAndRestore(str(backup_dir))]


def _write_atomic(path: Path, write: Any) -> None:
    """``write(tmp)`` then rename over ``path``: a crash never leaves a half-written file."""
    suffix = WEIGHTS_SUFFIX if path.name.endswith(WEIGHTS_SUFFIX) else path.suffix
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}{suffix}")  # Keras checks the suffix
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _final_metrics(history: keras.callbacks.History) -> dict[str, float]:
    logs = {k: float(v[-1]) for k, v in history.history.items() if v}
    if history.history.get("val_accuracy"):
        logs["best_val_accuracy"] = float(max(history.history["val_accuracy"]))
    return logs


def pretrain(
    source: str | os.PathLike,
    backbone: str,
    out: str | os.PathLike,
    *,
    image_size: int | Sequence[int] | None = None,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: float = 0.05,
    label_smoothing: float = 0.1,
    augmentation: Any = "standard",
    head: str = "avg",
    dropout: float | None = None,
    validation_split: float | None = 0.1,
    bn_momentum: float | None = 0.9,
    recalibrate_batches: int = 100,
    cache_images: str | os.PathLike | None = "auto",
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    backup_dir: str | os.PathLike | None = None,
    seed: int | None = DEFAULT_SEED,
    verbose: Any = "auto",
) -> Path:
    """Train ``backbone`` from random init on a labelled source folder; save it for transfer.

    Loads ``source`` with :func:`~tfx_transfer.load_image_folder` (one-hot labels,
    ``augmentation`` on the training batches), trains :func:`~tfx_transfer.training.scratch.build_scratch_model` with
    the from-scratch recipe of this module, and writes the backbone weights
    (``backbone.save_weights``), the source head's weights and a JSON description.
    ``build_transfer_model(backbone, n, input_shape=..., weights=PATH)`` then starts
    from exactly these weights.

    Args:
        source: folder of class folders (or ``train/`` + ``val/``).
        backbone: any registry name (:func:`~tfx_transfer.list_backbones`).
        out: a folder (``<backbone>.weights.h5`` inside) or a ``*.weights.h5`` path.
        image_size: side or ``(height, width)``; default the backbone's default size.
        epochs: training epochs (default 30).
        batch_size: images per batch (default 32).
        lr: peak AdamW learning rate after warmup (default 1e-3).
        weight_decay: decoupled weight decay (default 0.05; not on biases/BN).
        warmup: fraction of all steps used for the linear warmup (default 0.05).
        label_smoothing: cross-entropy label smoothing (default 0.1).
        augmentation: an Augmentation, preset name or ImageDataGenerator kwargs dict
            (default ``"standard"``); ``None`` for none.
        head: ``"avg"`` (default), ``"max"`` or ``"flatten"``.
        dropout: before the classifier; default 0.2 (pooled heads), 0.5 (flatten).
        validation_split: fraction held out per class (default 0.1); ``None`` when
            ``source`` has its own ``val/`` or for no validation.
        bn_momentum: BatchNormalization momentum while pretraining (default 0.9;
            see :func:`~tfx_transfer.training.scratch.build_scratch_model`).
        recalibrate_batches: after training, recompute the BatchNorm moving
            statistics on up to this many un-augmented training batches
            (:func:`~tfx_transfer.training.scratch.recalibrate_batchnorm`; default 100, 0 to skip).
        cache_images: decoded-image cache: ``"auto"`` (the default, as in ``train``: in
            memory within 2 GB of decoded pixels, else decoded every epoch), ``"memory"``,
            ``None``/``"none"`` or a folder (:mod:`tfx_transfer.data.image_cache`).
        callbacks: extra Keras callbacks (``TerminateOnNaN`` is always added).
        backup_dir: folder for ``keras.callbacks.BackupAndRestore`` (weights,
            optimizer state, epoch; saved every epoch). An interrupted run called
            again with the same arguments continues from its last finished epoch;
            Keras deletes the folder when training completes. Default: no backup.
        seed: seeds Keras/NumPy/Python (``keras.utils.set_random_seed``), the split and
            the shuffling; ``None`` leaves the global seeds alone.
        verbose: passed to ``model.fit``.

    Returns:
        Path of the saved backbone ``.weights.h5``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> source = Path(tempfile.mkdtemp())  # one sub-folder of images per source class
        >>> for i in range(8):
        ...     (source / f"class{i % 2}").mkdir(exist_ok=True)
        ...     Image.new("RGB", (40, 40), (200 * (i % 2), 80, 0)).save(source / f"class{i % 2}/{i}.png")
        >>> path = pretrain(source, "vgg16", tempfile.mkdtemp(), image_size=32, epochs=1,
        ...                 validation_split=None, augmentation=None, recalibrate_batches=0,
        ...                 verbose=0)  # VGG16 has no BatchNorm to recalibrate
        >>> sorted(p.name for p in path.parent.iterdir())
        ['vgg16.head.weights.h5', 'vgg16.json', 'vgg16.weights.h5']
        >>> read_pretrain_info(path)["class_names"]
        ['class0', 'class1']
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=path, head="avg")
    """
    from tfx_transfer import __version__
    from tfx_transfer.data.augmentation import as_augmentation
    from tfx_transfer.data.folder import load_image_folder

    spec = get_backbone(backbone)
    paths = output_paths(out, spec.name)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r}: need a positive integer.")
    if image_size is None:
        image_size = spec.default_size
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    if seed is not None:
        keras.utils.set_random_seed(seed)

    augmenter = as_augmentation(augmentation)
    folder = load_image_folder(
        source, image_size=image_size, batch_size=batch_size, validation_split=validation_split,
        seed=DEFAULT_SEED if seed is None else seed, label_mode="categorical", cache_images=cache_images,
    )
    train = folder.train if augmenter is None else augmenter.map_dataset(folder.train)
    model = build_scratch_model(spec.name, folder.num_classes, input_shape=image_size + (3,),
                                head=head, dropout=dropout, bn_momentum=bn_momentum)
    if recalibrate_batches and not batchnorm_layers(get_backbone_model(model)):
        # Said before training, not after it: there are no BatchNorm statistics to recalibrate.
        print(f"pretrain: backbone {spec.name!r} has no BatchNormalization layer; "
              f"recalibrate_batches={recalibrate_batches} is not applied.", flush=True)
        recalibrate_batches = 0
    steps = epochs * math.ceil(len(folder.files["train"]) / batch_size)
    model.compile(
        optimizer=scratch_optimizer(steps, lr, weight_decay, warmup),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        train, validation_data=folder.validation, epochs=epochs,
        callbacks=[keras.callbacks.TerminateOnNaN(), *_backup(backup_dir), *(callbacks or [])],
        verbose=verbose,
        shuffle=False,  # load_image_folder reshuffles the training set every epoch
    )
    metrics = _final_metrics(history)
    if recalibrate_batches:
        recalibrate_batchnorm(model, folder.train, max_batches=recalibrate_batches)
        if folder.validation is not None:
            final = model.evaluate(folder.validation, verbose=0, return_dict=True)
            metrics.update({f"final_val_{k}": float(v) for k, v in final.items()})
    seconds = time.perf_counter() - start

    info = {
        "backbone": spec.name,
        "image_size": list(image_size),
        "input_shape": list(image_size) + [3],
        "head": head,
        "dropout": transfer_config(model)["dropout"],
        "num_classes": folder.num_classes,
        "class_names": list(folder.class_names),
        "source": str(Path(source).resolve()),
        "counts": {split: sum(c.values()) for split, c in folder.counts.items()},
        "recipe": {
            "epochs": epochs, "epochs_run": len(history.epoch), "batch_size": batch_size,
            "steps": steps, "optimizer": "AdamW", "lr": lr,
            "schedule": "linear warmup + cosine decay", "warmup": warmup,
            "weight_decay": weight_decay, "label_smoothing": label_smoothing,
            "bn_momentum": bn_momentum, "recalibrate_batches": recalibrate_batches,
            "augmentation": augmentation if augmentation is None
            or isinstance(augmentation, (str, dict)) else type(augmentation).__name__,
            "validation_split": validation_split, "seed": seed,
        },
        "metrics": metrics,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "train_seconds": round(seconds, 1),
        "files": {"weights": paths["weights"].name, "head": paths["head"].name},
        "versions": {"tfx_transfer": __version__, "keras": keras.__version__,
                     "backend": keras.backend.backend(), "python": platform.python_version()},
    }
    paths["weights"].parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths["weights"], get_backbone_model(model).save_weights)
    _write_atomic(paths["head"], get_head(model).save_weights)
    _write_atomic(paths["info"], lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    return paths["weights"]
