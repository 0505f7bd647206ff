"""A fixed sample of a class-folder dataset: ``per_class`` images of each class, as symlinks.

The few-shot and head-sweep benchmarks draw the same images for every method and run: the
files of each class sorted, shuffled with ``random.Random(seed)``, the first ``per_class``
kept. The sample is a temporary folder of symlinks, removed when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def class_sample(data: str | Path, per_class: int, seed: int = 0) -> Iterator[Path]:
    """A temporary ``class/file`` folder of symlinks to ``per_class`` files of each class of ``data``.

    Args:
        data: a folder of class folders (hidden files and folders are left out).
        per_class: files kept per class (all of them when a class has fewer).
        seed: the shuffle's seed.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("a/1.png", "a/2.png", "a/3.png", "b/1.png"):
        ...     (root / name).parent.mkdir(exist_ok=True)
        ...     _ = (root / name).write_bytes(b"")
        >>> with class_sample(root, 2) as sample:
        ...     kept = sorted(str(p.relative_to(sample)) for p in sample.glob("*/*"))
        ...     targets = sorted({p.resolve().parent.name for p in sample.glob("*/*")})
        >>> len(kept), kept[-1], targets, sample.exists()
        (3, 'b/1.png', ['a', 'b'], False)
    """
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="class_sample_") as tmp:
        sample = Path(tmp)
        for class_dir in sorted(p for p in Path(data).iterdir()
                                if p.is_dir() and not p.name.startswith(".")):
            files = sorted(p for p in class_dir.iterdir()
                           if p.is_file() and not p.name.startswith("."))
            rng.shuffle(files)
            (sample / class_dir.name).mkdir()
            for path in files[:per_class]:
                (sample / class_dir.name / path.name).symlink_to(path.resolve())
        yield sample
