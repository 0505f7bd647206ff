"""ONNX export (pixels in, probabilities out), checked with onnxruntime against Keras on real images.

Keras 3's own exporter (``model.export(path, format="onnx")``) writes the graph. It
exists in every supported Keras (3.8-3.15) and is tf2onnx underneath on the TensorFlow
backend, with Keras's patch that lets tf2onnx 1.17 run on numpy 2; calling tf2onnx
directly would be the same conversion without that patch, so there is no second route; the input is renamed ``pixels``
(``float32 [N, H, W, 3]``, RGB 0..255) and the output ``probabilities``
(``float32 [N, C]``), and the class names go into the model's ``metadata_props``
(``class_names``, a JSON list). Needs ``pip install 'tfx_transfer[onnx]'`` (onnx,
onnxruntime, tf2onnx).

See :func:`export_onnx` for an example.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfx_transfer.export.parity import (
    DEFAULT_MIN_AGREEMENT,
    answer_thresholds,
    check_agreement,
    compare,
)
from tfx_transfer.export.sample_images import labelled_sample, sample_images

ONNX_TOLERANCE = 1e-4  # largest |onnxruntime - Keras| probability accepted by default
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"


def _require() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): "
                          "pip install 'tfx_transfer[onnx]'.") from exc


def _rename(proto: Any, old: str, new: str) -> None:
    for node in proto.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*proto.graph.input, *proto.graph.output):
        if value.name == old:
            value.name = new


def _keras_onnx(model: Any, size: tuple[int, int]) -> Any:
    """The ONNX ModelProto of Keras's own exporter, input and output renamed."""
    import onnx
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="tfx_transfer_onnx_") as tmp:
        target = os.path.join(tmp, "model.onnx")
        spec = tf.TensorSpec([None, *size, 3], tf.float32, name=INPUT_NAME)
        with warnings.catch_warnings():  # Keras's tf2onnx shim probes np.object (numpy 2)
            warnings.filterwarnings("ignore", category=FutureWarning, module="keras")
            model.export(target, format="onnx", input_signature=[spec], verbose=False)
        proto = onnx.load(target)
    _rename(proto, proto.graph.input[0].name, INPUT_NAME)
    _rename(proto, proto.graph.output[0].name, OUTPUT_NAME)
    return proto


def onnx_probabilities(model: str | os.PathLike | bytes, pixels: np.ndarray) -> np.ndarray:
    """``(N, C)`` probabilities of an ONNX file (or its bytes) on pixels, with onnxruntime.

    Example (a one-node graph: the softmax of the flattened pixels):
        >>> import onnx
        >>> from onnx import TensorProto, helper
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Flatten", ["pixels"], ["f"]),
        ...      helper.make_node("Softmax", ["f"], ["probabilities"])], "g",
        ...     [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 1, 1, 3])],
        ...     [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])])
        >>> proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
        >>> probabilities = onnx_probabilities(proto.SerializeToString(), np.zeros((2, 1, 1, 3)))
        >>> probabilities.shape, bool(np.allclose(probabilities, 1 / 3))
        ((2, 3), True)
    """
    import onnxruntime

    source = model if isinstance(model, bytes) else os.fspath(model)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.asarray(pixels, np.float32)})[0], np.float32)


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    validation_data: Any = None,
    sample_pixels: np.ndarray | None = None,
    check: bool = True,
    tolerance: float = ONNX_TOLERANCE,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Write ``model`` as ONNX after checking it with onnxruntime against ``model.predict``.

    Args:
        model: a Keras model with a fixed ``(None, H, W, 3)`` pixel input; TensorFlow backend.
        path: the ``.onnx`` file to write (atomically; folders created).
        validation_data: labelled images of the check (as for :func:`tfx_transfer.export_tflite`).
        sample_pixels: unlabelled ``(N, H, W, 3)`` pixels when no ``validation_data``
            (default: 8 random images).
        check: run the check (refuse a model that fails it: ``ParityError``, nothing written).
        tolerance: largest absolute probability difference accepted.
        min_agreement: smallest top-1 agreement accepted (real images only).
        class_names: stored in ``metadata_props["class_names"]`` (default: the model's).

    Returns:
        ``{"path", "size_bytes", "exporter", "input", "output", "opset", "max_abs_diff",
        "top1_agreement", "accuracy", "keras_accuracy", "num_samples", "images",
        "tolerance", "min_agreement"}``.

    Example:
        >>> import keras, os, tempfile, numpy as np, tfx_transfer as tt
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
        ...                           keras.layers.Dense(2, activation="softmax")])
        >>> x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
        >>> report = tt.export_onnx(model, os.path.join(tempfile.mkdtemp(), "m.onnx"),
        ...                         validation_data=(x, np.array([0, 1, 0, 1])), class_names=["a", "b"])
        >>> report["top1_agreement"], report["max_abs_diff"] <= 1e-4, report["input"], report["output"]
        (1.0, True, 'pixels', 'probabilities')
    """
    from tfx_transfer.export.saved_model import model_image_size, tensorflow_backend
    from tfx_transfer.export.single_file import model_class_names, write_file

    _require()
    if not tensorflow_backend():
        raise ValueError("export_onnx converts a TensorFlow graph: run it with "
                         "KERAS_BACKEND=tensorflow (or `tfx-transfer export MODEL OUT --onnx FILE`).")
    size = model_image_size(model)
    names = model_class_names(model, class_names)
    proto = _keras_onnx(model, size)
    if names is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "class_names", json.dumps(names)
    content = proto.SerializeToString()
    report: dict[str, Any] = {
        "path": str(path), "exporter": "keras (tf2onnx)", "input": INPUT_NAME, "output": OUTPUT_NAME,
        "opset": int(proto.opset_import[0].version), "tolerance": tolerance,
        "min_agreement": min_agreement, "max_abs_diff": None, "top1_agreement": None,
        "accuracy": None, "keras_accuracy": None, "num_samples": 0, "images": None}
    if check:
        if validation_data is not None:
            x, y = labelled_sample(validation_data, size, names, count=500)
            source = os.fspath(validation_data) if isinstance(validation_data, (str, os.PathLike)) \
                else "validation_data"
        else:
            rng = np.random.default_rng(0)
            x = (sample_images(sample_pixels, size, None) if sample_pixels is not None
                 else rng.integers(0, 256, (8, *size, 3)).astype(np.float32))
            y, source = None, "sample_pixels" if sample_pixels is not None else "random pixels"
        expected = np.asarray(model.predict(x, verbose=0))
        figures = compare(expected, onnx_probabilities(content, x), y, source,
                          answer_thresholds(model, expected.shape[-1]))
        report.update({k: v for k, v in figures.items() if k != "num_images"},
                      num_samples=figures["num_images"])
        bound = 0.0 if source == "random pixels" else min_agreement
        check_agreement(figures, bound, "ONNX", tolerance)
    path = write_file(content, path)
    report["size_bytes"] = path.stat().st_size
    return report


def read_onnx_class_names(path: str | os.PathLike) -> list[str] | None:
    """The class names an ONNX file written by :func:`~tfx_transfer.export_onnx` carries, or ``None``.

    Example:
        >>> import onnx, os, tempfile
        >>> proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
        >>> entry = proto.metadata_props.add()
        >>> entry.key, entry.value = "class_names", '["ant", "bee"]'
        >>> path = os.path.join(tempfile.mkdtemp(), "m.onnx")
        >>> onnx.save(proto, path)
        >>> read_onnx_class_names(path)
        ['ant', 'bee']
    """
    import onnx

    proto = onnx.load(os.fspath(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == "class_names":
            return list(json.loads(entry.value))
    return None
