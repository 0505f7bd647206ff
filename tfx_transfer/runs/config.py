"""A run's configuration: the settings of :func:`tfx_transfer.train`, checked and normalised.

The settings that define a run (:data:`RUN_SETTINGS`) are the keyword arguments of
``train``, the flags of ``tfx-transfer train`` and the keys of the run's
``config.json``: one name each. :func:`run_config` gives the configuration of a
new run (normalised, checked, the backbone's name and size resolved) or the saved
one of a run to resume (an argument given with a non-default value must agree).

Example:
    >>> normalise("image_size", 64), normalise("cache_images", None), normalise("cache_features", True)
    ([64, 64], 'none', True)
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tfx_transfer.layout import CONFIG_FILE, RunFolder

# The settings that define a run: train()'s arguments, the CLI's flags and config.json's keys.
RUN_SETTINGS = ("backbone", "weights", "image_size", "head_epochs", "fine_tune_epochs", "blocks",
                "augmentation", "batch_size", "head", "units", "dropout", "head_lr", "fine_tune_lr",
                "validation_split", "seed", "cache_features", "cache_images", "cache_budget_gb",
                "class_weight", "monitor", "top_k", "train_bn", "deterministic", "unknown_tpr",
                *("images", "x_col", "y_col", "label_delim", "valid_col"))
# the settings that read a table (data_dir a CSV file): load_image_table's names
TABLE_SETTINGS = {"images": "directory", "x_col": "x_col", "y_col": "y_col",
                  "label_delim": "label_delim", "valid_col": "valid_col"}
MONITORS = ("val_loss", "val_accuracy")


def augmentation_presets() -> tuple[str, ...]:
    """The names ``augmentation=`` takes (the presets of :class:`tfx_transfer.Augmentation`).

    Example:
        >>> augmentation_presets()
        ('none', 'light', 'standard', 'heavy')
    """
    from tfx_transfer.data.augmentation import PRESETS

    return tuple(PRESETS)


def _as_jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_as_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def normalise(name: str, value: Any) -> Any:
    """The JSON form of one run setting, as ``config.json`` holds it; ValueError when invalid.

    Example:
        >>> normalise("augmentation", None), normalise("head_lr", "AUTO")
        ('none', 'auto')
    """
    if name == "image_size" and value is not None:
        size = [int(value)] * 2 if isinstance(value, numbers.Integral) else [int(v) for v in value]
        if len(size) != 2:
            raise ValueError(f"image_size={value!r}: pass an int or (height, width).")
        return size
    if name == "augmentation":
        key = "none" if value is None else str(value).lower()
        if key not in augmentation_presets():
            raise ValueError(f"augmentation={value!r}: choose one of {augmentation_presets()}.")
        return key
    if name == "head_lr" and isinstance(value, str):
        if value.lower() != "auto":
            raise ValueError(f"head_lr={value!r}: pass a learning rate (e.g. 1e-3) or 'auto' (the "
                             "learning-rate finder picks it).")
        return "auto"
    if name == "cache_features":
        if isinstance(value, str) and value.lower() == "auto":
            return "auto"
        if not isinstance(value, bool):
            raise ValueError(f"cache_features={value!r}: use 'auto' (cache when the head phase "
                             "allows it), True (cache or raise) or False.")
        return value
    if name == "cache_images":
        from tfx_transfer.data.image_cache import parse_cache_images

        return parse_cache_images(value)
    if name == "images" and value is not None:
        return str(Path(value).resolve())
    if name == "y_col" and not isinstance(value, str):
        return [str(v) for v in value]
    if name == "weights":
        return "none" if value is None else os.fspath(value) if isinstance(value, os.PathLike) else value
    return _as_jsonable(value)


def _check(config: dict[str, Any]) -> None:
    budget = config["cache_budget_gb"]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
        raise ValueError(f"cache_budget_gb={budget!r} must be a number of GB >= 0.")
    tpr = config.get("unknown_tpr", 0.95)  # (a config.json from before the setting)
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0.0 < tpr <= 1.0:
        raise ValueError(f"unknown_tpr={tpr!r} must be in (0, 1], e.g. 0.95 (95% of the "
                         "validation images accepted as known).")
    if config["monitor"] not in MONITORS:
        raise ValueError(f"monitor={config['monitor']!r}: use 'val_loss' or 'val_accuracy'.")
    if config["class_weight"] not in (None, "balanced"):
        raise ValueError(f"class_weight={config['class_weight']!r}: use None or 'balanced'.")
    for name in ("head_epochs", "fine_tune_epochs"):
        if isinstance(config[name], bool) or not isinstance(config[name], int) or config[name] < 0:
            raise ValueError(f"{name}={config[name]!r} must be an int >= 0.")
    if config["head_epochs"] + config["fine_tune_epochs"] == 0 and config["head"] != "cosine":
        raise ValueError("head_epochs=0 and fine_tune_epochs=0: nothing to train (only a cosine "
                         "head, imprinted from the images, needs no epoch: head='cosine').")
    if config["cache_features"] is True and config["augmentation"] != "none":
        raise ValueError(f"cache_features=True is not possible with augmentation="
                         f"{config['augmentation']!r}: the training images change every epoch, so "
                         "their backbone features cannot be computed once. Use "
                         "cache_features='auto' (it caches when nothing random runs before the "
                         "backbone) or False, or augmentation='none'.")


def new_config(data_dir: str | os.PathLike, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of a new run on ``data_dir``: every setting normalised and checked.

    Args:
        data_dir: the image folder (recorded resolved, as ``"data_dir"``).
        settings: a value for every name of :data:`RUN_SETTINGS`.

    Example:
        >>> from tfx_transfer.runs.job import train_defaults
        >>> config = new_config("photos", {**train_defaults(), "backbone": "VGG16", "image_size": None})
        >>> config["backbone"], config["image_size"], config["cache_features"]
        ('vgg16', [224, 224], 'auto')
    """
    from tfx_transfer.models.backbones import get_backbone

    config = {name: normalise(name, settings[name]) for name in RUN_SETTINGS}
    spec = get_backbone(config["backbone"])
    config["backbone"] = spec.name
    if config["image_size"] is None:
        config["image_size"] = [spec.default_size, spec.default_size]
    _check(config)
    config["data_dir"] = str(Path(data_dir).resolve())
    if not Path(data_dir).is_file():
        from tfx_transfer.runs.job import train_defaults

        defaults = train_defaults()
        given = [f"{n}={config[n]!r}" for n in TABLE_SETTINGS if config[n] != normalise(n, defaults[n])]
        if given:
            raise ValueError(f"{', '.join(given)} read a table (a CSV file), but {str(data_dir)!r} "
                             "is not a file; pass the CSV as DATA_DIR, or drop them for a folder.")
    return config


def _saved_setting(config: Mapping[str, Any], name: str) -> Any:
    # weights and head_lr are resolved while training ('auto' -> what was used)
    if name in ("weights", "head_lr"):
        return config.get(f"{name}_requested", config.get(name))
    return config.get(name)


def resume_config(run: str | os.PathLike, settings: Mapping[str, Any],
                  defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The saved configuration of the run to resume; a setting given with a non-default value must agree.

    Args:
        run: the run folder.
        settings: the settings given (every name of :data:`RUN_SETTINGS`).
        defaults: their defaults (a setting at its default is taken from the run).

    Example:
        >>> import tempfile
        >>> from tfx_transfer.runs.job import train_defaults
        >>> run = RunFolder(tempfile.mkdtemp())
        >>> _ = run.write_config({"backbone": "vgg16", "head_epochs": 1})
        >>> resume_config(run.path, train_defaults(), train_defaults())["backbone"]
        'vgg16'
    """
    folder = RunFolder(run)
    if not folder.config.is_file():
        raise FileNotFoundError(
            f"Nothing to resume in {str(folder.path)!r}: it has no {CONFIG_FILE}. Start the run "
            "without resume (--resume) first."
        )
    config = folder.read_config()
    for name in TABLE_SETTINGS:  # runs from before tables
        config.setdefault(name, normalise(name, defaults[name]))
    clashes = []
    for name in RUN_SETTINGS:
        value, saved = normalise(name, settings[name]), _saved_setting(config, name)
        if value != normalise(name, defaults[name]) and value != saved:
            clashes.append(f"{name}={value!r} (the run has {saved!r})")
    if clashes:
        raise ValueError(
            f"Cannot resume {str(folder.path)!r} with different settings: {', '.join(clashes)}. "
            "Drop those arguments (the saved config.json is reused) or start a new run folder."
        )
    return config


def run_config(data_dir: str | os.PathLike | None, run: str | os.PathLike, resume: bool,
               settings: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of a new run, or the saved one of the run to resume.

    Args:
        data_dir: the image folder; ``None`` with ``resume`` (the saved one).
        run: the run folder.
        resume: continue the run in ``run`` (:func:`resume_config`).
        settings: the settings given (every name of :data:`RUN_SETTINGS`).
        defaults: their defaults.

    Example:
        >>> import tempfile
        >>> from tfx_transfer.runs.job import train_defaults
        >>> run_config("photos", tempfile.mkdtemp(), False, train_defaults(), train_defaults())["head_epochs"]
        10
    """
    folder = RunFolder(run)
    if resume:
        config = resume_config(folder.path, settings, defaults)
        if data_dir is not None and Path(data_dir).resolve() != Path(config["data_dir"]):
            raise ValueError(f"Cannot resume {str(folder.path)!r} on {str(data_dir)!r}: the run "
                             f"trains on {config['data_dir']!r}. Drop DATA_DIR or pass that folder.")
        return config
    if data_dir is None:
        raise ValueError("data_dir is required (None is only for resume=True).")
    if folder.config.exists():
        raise ValueError(f"{str(folder.path)!r} already holds a run; pass resume=True (--resume) "
                         "to continue it, or choose another run folder (--out).")
    return new_config(data_dir, settings)


def settings_of(config_file: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """The run settings and data folder saved in a run's ``config.json`` (to train them again).

    Example:
        >>> import tempfile
        >>> run = RunFolder(tempfile.mkdtemp())
        >>> path = run.write_config({"backbone": "vgg16", "data_dir": "/data", "counts": {}})
        >>> settings_of(path)
        ({'backbone': 'vgg16'}, '/data')
    """
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist (a run's {CONFIG_FILE}).")
    saved = json.loads(path.read_text())
    return {name: saved[name] for name in RUN_SETTINGS if name in saved}, saved.get("data_dir")


def validation_images(config: Mapping[str, Any]) -> str:
    """What a run's validation images were, in the words its messages and reports use.

    A folder's ``val/``, a ``validation_split`` share of a folder's or a table's images, or
    a table's ``valid_col`` rows (read after :func:`~tfx_transfer.runs.steps.load_data`,
    which records ``validation_split_used``).

    Args:
        config: the run's settings (``data_dir``, ``valid_col``, ``validation_split_used``).

    Example:
        >>> validation_images({"data_dir": "data/labels.csv", "valid_col": "is_valid",
        ...                    "validation_split_used": None})
        'the is_valid rows of labels.csv'
        >>> validation_images({"data_dir": "photos", "validation_split_used": 0.2})
        'a validation_split=0.2 share of photos/'
        >>> validation_images({"data_dir": "photos", "validation_split_used": None})
        'photos/val/'
    """
    root = Path(config["data_dir"])
    split = config.get("validation_split_used")
    table = root.suffix.lower() in (".csv", ".tsv", ".txt") or root.is_file()
    if table and config.get("valid_col") and split is None:
        return f"the {config['valid_col']} rows of {root.name}"
    if split:
        return f"a validation_split={split} share of {root.name}{'' if table else '/'}"
    from tfx_transfer.data.files import split_folders

    found = split_folders(root).get("validation") if root.is_dir() else None
    return f"{root.name}/{found.name if found else 'val'}/"
