"""Backbone weights: ImageNet through the Keras cache (fail-fast offline), or a file.

``weights="imagenet"`` uses the standard Keras cache (``$KERAS_HOME/models``,
``~/.keras/models`` by default) and downloads when online, exactly as
``keras.applications`` does. Before any download we check, in about a second, that
the download host answers; offline, :class:`WeightsUnavailableError` says which file
is missing and how to get it onto the machine. Set ``TFX_TRANSFER_OFFLINE=1`` to skip
the network check entirely.

``weights=PATH`` loads a backbone weights file by layer name with shape checks:
the ``*_notop.h5`` files Keras publishes (Keras 2 HDF5 layout) or a
``.weights.h5`` saved from a backbone with ``backbone.save_weights(...)``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

PROBE_TIMEOUT_S = 3.0


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither cached nor downloadable right now.

    Example:
        >>> issubclass(WeightsUnavailableError, RuntimeError)
        True
    """


def keras_cache_dir() -> Path:
    """The folder Keras caches application weights in (``$KERAS_HOME/models``).

    Keras's own answer when Keras is imported; before that, the same rule without importing
    it (:func:`_keras_home_before_import`), so that ``tfx-transfer weights where`` is instant.

    Example:
        >>> keras_cache_dir().name
        'models'
    """
    if "keras" not in sys.modules:
        return _keras_home_before_import() / "models"
    from tfx_transfer._compat import keras_home

    return keras_home() / "models"


def _keras_home_before_import() -> Path:
    """``$KERAS_HOME`` by the rule Keras applies when it is imported (keras.src.backend.config,
    3.8-3.15): the variable, else ``~/.keras``, else ``/tmp/.keras`` when ``~`` is read-only.

    Example:
        >>> from tfx_transfer._compat import keras_home
        >>> _keras_home_before_import() == keras_home()
        True
    """
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    home = os.path.expanduser("~")
    return Path(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def _offline_forced() -> bool:
    return os.environ.get("TFX_TRANSFER_OFFLINE", "").lower() in ("1", "true", "yes")


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    if _offline_forced():
        return False
    parts = urllib.parse.urlparse(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        # Downloads go through the proxy (HTTPS_PROXY / HTTP_PROXY): probe it instead.
        parts = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:  # DNS look-ups have no timeout of their own: run in a thread
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


@contextlib.contextmanager
def guard_downloads(backbone: str) -> Iterator[None]:
    """Make ``keras.applications`` fail fast, with a way out, when offline.

    Wraps Keras's ``get_file`` for the duration of the block: a cached file is used
    as usual; a missing one is downloaded only if its host answers within
    ``PROBE_TIMEOUT_S`` seconds, else :class:`WeightsUnavailableError` is raised.

    Example (not run by the tests: it downloads the ImageNet weights when online):
        >>> with guard_downloads("vgg16"):  # doctest: +SKIP
        ...     keras.applications.VGG16(include_top=False)
    """
    from tfx_transfer._compat import keras_home, replaced_get_file

    def guarded(original: Callable[..., Any]) -> Callable[..., Any]:
        def get_file(fname=None, origin=None, *args, cache_subdir="datasets", cache_dir=None,
                     **kwargs):
            name = fname or os.path.basename(urllib.parse.urlparse(origin or "").path)
            target = (Path(cache_dir) if cache_dir else keras_home()) / cache_subdir / name
            if not target.exists() and not _reachable(origin or ""):
                raise WeightsUnavailableError(_unavailable_message(backbone, target, origin, name))
            return original(fname, origin, *args, cache_subdir=cache_subdir,
                            cache_dir=cache_dir, **kwargs)
        return get_file

    with replaced_get_file(guarded):
        yield


def _unavailable_message(backbone: str, target: Path, origin: str | None, name: str) -> str:
    return (
        f"ImageNet weights for backbone {backbone!r} are not cached and cannot be "
        f"downloaded (no network{' (TFX_TRANSFER_OFFLINE is set)' if _offline_forced() else ''}).\n"
        f"  missing file: {target}\n"
        f"  download URL: {origin}\n"
        "Ways out:\n"
        f"  * on a machine with network run `tfx-transfer weights fetch {backbone}` and "
        f"copy {target.parent}/ to this machine (or set KERAS_HOME to a copy);\n"
        f"  * download the URL above yourself and pass weights='/path/to/{name}';\n"
        "  * pass weights=None to start from random initialisation "
        "(or weights=PATH from tfx_transfer.pretrain)."
    )


def fetch_weights(names: Iterable[str], *, image_size: int | None = None) -> list[Path]:
    """Download the ImageNet (no-top) weights of backbones into the Keras cache.

    Run this on a machine with network before going offline; copy the cache folder
    (:func:`keras_cache_dir`) to the offline machine. Also ``tfx-transfer weights
    fetch NAME...``.

    Args:
        names: registry names of the backbones.
        image_size: the square input side to build them at (only MobileNet variants
            have size-specific weights files); ``None``: each backbone's default.

    Example (not run by the tests: it downloads the ImageNet weights):
        >>> fetch_weights(["vgg16", "resnet50"])  # doctest: +SKIP
        [PosixPath('/home/me/.keras/models/vgg16_..._notop.h5'), ...]
    """
    from tfx_transfer.models.backbones import get_backbone

    cache = keras_cache_dir()
    out = []
    for name in names:
        spec = get_backbone(name)
        before = set(cache.glob("*")) if cache.exists() else set()
        size = image_size or spec.default_size
        with guard_downloads(spec.name):
            spec.build((size, size, 3), weights="imagenet")
        after = set(cache.glob("*")) if cache.exists() else set()
        out.extend(sorted(after - before) or [cache])
    return out


# --------------------------------------------------------------------------
# Weights files
# --------------------------------------------------------------------------


def _layers_with_weights(model: Any) -> list[Any]:
    return [layer for layer in model.layers if layer.weights]


def _read_legacy_h5(h5: Any) -> dict[str, list[Any]]:
    """Keras 2 layout: root attr ``layer_names``, each group attr ``weight_names``."""
    root = h5["model_weights"] if "model_weights" in h5 else h5
    out = {}
    for raw in root.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        group = root[name]
        wnames = [w.decode() if isinstance(w, bytes) else str(w)
                  for w in group.attrs.get("weight_names", [])]
        if wnames:
            out[name] = [group[w][()] for w in wnames]
    return out


def read_weights_file(path: str | os.PathLike) -> dict[str, list[Any]]:
    """Read a backbone weights file into ``{layer_name: [arrays]}``.

    Example:
        >>> import os, tempfile, h5py, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny_notop.h5")
        >>> with h5py.File(path, "w") as f:  # the Keras 2 layout of Keras's *_notop.h5 files
        ...     f.attrs["layer_names"] = [b"block1_conv1"]
        ...     f["block1_conv1/kernel:0"] = np.ones((3, 3, 3, 64))
        ...     f["block1_conv1/bias:0"] = np.zeros(64)
        ...     f["block1_conv1"].attrs["weight_names"] = [b"kernel:0", b"bias:0"]
        >>> arrays = read_weights_file(path)
        >>> arrays["block1_conv1"][0].shape
        (3, 3, 3, 64)
    """
    path = Path(path)
    with _open_h5(path) as h5:
        if "layer_names" in h5.attrs or "model_weights" in h5:
            return _read_legacy_h5(h5)
    raise ValueError(
        f"weights={str(path)!r}: not a Keras 2 HDF5 weights file (no 'layer_names')."
    )


def require_weights_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it is a file; else FileNotFoundError naming it and the way out.

    :func:`tfx_transfer.build_transfer_model` calls it before building the backbone (a
    large one builds for seconds; a mistyped path should fail at once).

    Args:
        path: a backbone weights file (``*_notop.h5`` from Keras, or a ``.weights.h5``).

    Example:
        >>> require_weights_file("/nonexistent/w.h5")
        Traceback (most recent call last):
        ...
        FileNotFoundError: weights='/nonexistent/w.h5': no such file. Pass 'imagenet', None, ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={str(path)!r}: no such file. Pass 'imagenet', None, or the path of a "
            "backbone weights file (*_notop.h5 from Keras, or a .weights.h5 you saved)."
        )
    return path


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[Any]:
    import h5py

    require_weights_file(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(
            f"weights={str(path)!r} is not a readable HDF5 weights file ({exc}). Pass a "
            "*_notop.h5 file from Keras or a .weights.h5 saved with backbone.save_weights()."
        ) from exc
    with h5:
        yield h5


def load_weights_by_name(model: Any, path: str | os.PathLike) -> None:
    """Load a weights file into ``model`` by layer name, checking every shape first.

    Keras 2 files (``*_notop.h5``): every layer of ``model`` that has weights must
    be in the file with matching shapes; nothing is assigned unless all of them fit.
    Keras 3 ``.weights.h5`` files are loaded by Keras, which matches layers by
    position and names the one that does not fit.

    Raises:
        ValueError: naming the first layer that is missing or whose shapes differ.

    Example:
        >>> import os, tempfile, numpy as np
        >>> from tfx_transfer.models.backbones import get_backbone
        >>> source = get_backbone("vgg16").build((32, 32, 3))
        >>> path = os.path.join(tempfile.mkdtemp(), "vgg16.weights.h5")
        >>> source.save_weights(path)
        >>> base = get_backbone("vgg16").build((32, 32, 3))
        >>> load_weights_by_name(base, path)
        >>> np.array_equal(base.weights[0].numpy(), source.weights[0].numpy())
        True
    """
    path = Path(path)
    with _open_h5(path) as h5:
        keras3 = "layers" in h5 or "vars" in h5
    if keras3:
        _load_keras3(model, path)
        return
    stored = read_weights_file(path)
    plan = []
    for layer in _layers_with_weights(model):
        if layer.name not in stored:
            raise ValueError(
                f"weights file {str(path)!r} has no weights for layer {layer.name!r} of "
                f"{model.name!r} (file has {len(stored)} layers, e.g. {sorted(stored)[:3]}). "
                "Is it the weights file of this backbone?"
            )
        arrays = stored[layer.name]
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise ValueError(
                f"weights file {str(path)!r} does not fit layer {layer.name!r}: the layer "
                f"expects shapes {expected}, the file has {got}. Use the weights file of the "
                "same backbone (and, for a Flatten head, the same input size)."
            )
        plan.append((layer, arrays))
    for layer, arrays in plan:
        layer.set_weights(arrays)


def _load_keras3(model: Any, path: Path) -> None:
    """Keras 3 ``.weights.h5``: Keras's own loader (it names a layer that does not fit)."""
    try:
        model.load_weights(path)
    except ValueError as exc:
        raise ValueError(
            f"weights file {str(path)!r} does not fit backbone {model.name!r}: {exc}\n"
            "Use weights saved from the same backbone (same registry name; for a Flatten head "
            "the same input size), e.g. by tfx_transfer.pretrain or backbone.save_weights()."
        ) from exc
