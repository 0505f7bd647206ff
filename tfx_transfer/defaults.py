"""Defaults shared by several layers: one value per concept, read by the API, the CLI and config.json.

Pure Python (no Keras, no TensorFlow). The training defaults (epochs, learning
rates) live with ``fine_tune`` in :mod:`tfx_transfer.training.finetune`.

Example:
    >>> DEFAULT_SEED, default_top_k(3), default_top_k(100)
    (1337, 3, 5)
"""

from __future__ import annotations

# Seeds the split, shuffling, augmentation and initialisation wherever a function takes ``seed``.
DEFAULT_SEED = 1337
# The most classes listed per image (predictions, exports, explanations) and the k of top-k accuracy.
MAX_TOP_K = 5


def default_top_k(num_classes: int) -> int:
    """``top_k`` when none is given: ``min(5, num_classes)``.

    Args:
        num_classes: the number of classes of the model.

    Example:
        >>> default_top_k(2)
        2
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be at least 1.")
    return min(MAX_TOP_K, num_classes)
