"""Small helpers shared by the tests (tiny models, generated images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_pixels(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB pixels, shape (n, size, size, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def tiny_labels(n: int = 4, num_classes: int = 2, seed: int = 0) -> np.ndarray:
    return np.arange(n) % num_classes


def weights_by_name(model) -> dict[str, np.ndarray]:
    """{variable path: value copy} for every weight of ``model``."""
    return {w.path: np.array(w.numpy()) for w in model.weights}


def write_class_folders(root: Path, classes=("cats", "dogs"), per_class: int = 4,
                        size: int = 40, seed: int = 0) -> Path:
    """A folder of class sub-folders of small, class-coloured PNG/JPEG images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), np.float32)
            base[..., c % 3] = 180
            img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(img).save(folder / f"{name}_{i}.{ext}")
    return Path(root)


def predict_any(model, x: np.ndarray) -> np.ndarray:
    """Probabilities of any model the kit saves (a joint model: both outputs, target first)."""
    if isinstance(model.input, dict):
        out = model.predict({"target": x, "source": x}, verbose=0)
        return np.concatenate([out["target"], out["source"]], axis=1)
    return model.predict(x, verbose=0)


def once_per_session(tmp_path_factory, name: str, make) -> dict:
    """``make(root)`` (a JSON-able dict) once per ``pytest`` session, shared by the xdist workers.

    A file lock: the first worker makes it under ``<basetemp>/../<name>``, the others wait and
    read what it wrote. A worker that failed half-way leaves no record, so the next one starts
    over in an emptied folder.
    """
    import fcntl
    import json
    import os
    import shutil

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    root.mkdir(exist_ok=True)
    info = root / f"{name}.json"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not info.exists():
            for stale in root.iterdir():
                if stale.name != ".lock":
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            info.write_text(json.dumps(make(root)))
    return json.loads(info.read_text())
