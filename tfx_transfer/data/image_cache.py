"""``cache_images``: where decoded, resized images are kept between epochs (one meaning everywhere).

``load_image_folder``, ``load_image_table``, ``train``, ``pretrain`` and the CLI's ``--cache-images``
take the same values, with one default, ``"auto"``:

* ``"auto"``: in memory when the decoded images fit a budget
  (:func:`choose_image_cache`), else streamed from disk;
* ``"memory"``: decoded once, kept in memory;
* ``None`` or ``"none"``: no cache, images are decoded every epoch (no folder is
  ever created);
* any other string or path: a folder of on-disk cache files.

Pure Python: importing this module imports neither TensorFlow nor Keras.

Example:
    >>> parse_cache_images(None), parse_cache_images("None"), parse_cache_images("MEMORY")
    ('none', 'none', 'memory')
    >>> resolve_cache_images("auto", {"train": {"a": 10}}, (32, 32))[0]
    'memory'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

CACHE_MODES = ("auto", "memory", "none")
# memory budget of cache_images="auto", in GB of decoded uint8 pixels
DEFAULT_CACHE_BUDGET_GB = 2.0


def parse_cache_images(value: Any) -> str:
    """``"auto"``, ``"memory"``, ``"none"`` or a folder path (as a string) from a ``cache_images`` value.

    Example:
        >>> parse_cache_images("Auto"), parse_cache_images("/tmp/cache")
        ('auto', '/tmp/cache')
    """
    if value is None:
        return "none"
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"cache_images={value!r}: pass 'auto', 'memory', None/'none' or a folder path.")
    text = os.fspath(value)
    if not text.strip():
        raise ValueError(f"cache_images={value!r}: pass 'auto', 'memory', None/'none' or a folder path.")
    return text.lower() if text.lower() in CACHE_MODES else text


def choose_image_cache(counts: Mapping[str, Mapping[str, int]], image_size: Sequence[int],
                       budget_gb: float) -> tuple[str, str]:
    """``("memory", why)`` when the decoded images fit ``budget_gb``, else ``("none", why)``.

    Decoded images cost ``height * width * 3`` bytes each (uint8), over every split.
    Cached in memory, each image is decoded and resized once and the epochs after
    the first only run the batched augmentation (``benchmarks/data_pipeline.py``
    measures both paths: about 140x less host CPU per image); past the budget,
    images are streamed (decoded every epoch).

    Args:
        counts: split -> class -> number of images (``ImageFolder.counts``).
        image_size: ``(height, width)`` of the decoded images.
        budget_gb: the memory budget in GB.

    Example:
        >>> choose_image_cache({"train": {"a": 800, "b": 800}, "validation": {"a": 200, "b": 200}},
        ...                    (224, 224), budget_gb=2.0)
        ('memory', 'decoded images 0.30 GB <= budget 2 GB: decoded once, kept in memory')
        >>> choose_image_cache({"train": {"a": 800}}, (224, 224), budget_gb=0.1)[0]
        'none'
    """
    images = sum(sum(per_class.values()) for per_class in counts.values())
    need = images * int(image_size[0]) * int(image_size[1]) * 3 / 1e9
    if need <= budget_gb:
        return "memory", (f"decoded images {need:.2f} GB <= budget {budget_gb:g} GB: decoded once, "
                          "kept in memory")
    return "none", (f"decoded images {need:.2f} GB > budget {budget_gb:g} GB: streamed from disk "
                    "(decoded every epoch); raise cache_budget_gb or pass cache_images=DIR")


def resolve_cache_images(value: Any, counts: Mapping[str, Mapping[str, int]], image_size: Sequence[int],
                         budget_gb: float = DEFAULT_CACHE_BUDGET_GB) -> tuple[str, str]:
    """The cache actually used for a ``cache_images`` value: ``("memory" | "none" | DIR, why)``.

    ``"auto"`` is decided by :func:`choose_image_cache`; the other values are taken as given.

    Args:
        value: a ``cache_images`` value (see the module docstring).
        counts: split -> class -> number of images (for ``"auto"``).
        image_size: ``(height, width)`` of the decoded images (for ``"auto"``).
        budget_gb: the memory budget of ``"auto"``.

    Example:
        >>> resolve_cache_images(None, {}, (8, 8))
        ('none', 'cache_images=none: decoded every epoch')
    """
    mode = parse_cache_images(value)
    if mode == "auto":
        return choose_image_cache(counts, image_size, budget_gb)
    reasons = {"none": "decoded every epoch", "memory": "decoded once, kept in memory"}
    return mode, f"cache_images={mode}: {reasons.get(mode, 'decoded once, cached in that folder')}"
