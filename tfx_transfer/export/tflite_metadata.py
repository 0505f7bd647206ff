"""Class names and input normalisation inside a ``.tflite`` file, as the TFLite Task Library reads them.

The standard TFLite metadata (``tflite_support``'s ``metadata_schema.fbs``): a
``ModelMetadata`` flatbuffer (file identifier ``M001``) stored in one of the
model's buffers and named ``TFLITE_METADATA`` in the model's ``metadata`` list;
the input tensor is described as an RGB image with ``NormalizationOptions``
(mean 0, std 1: the model takes raw 0..255 pixels, its preprocessing is inside)
and 0..255 stats; the output tensor has the label file as a
``TENSOR_AXIS_LABELS`` associated file; the label file itself is packed in a zip
archive appended to the model, as ``tflite_support``'s ``MetadataPopulator``
writes it (the ``.tflite`` is then also a valid zip file). A multi-label model's
per-label thresholds (``tt.transfer_config(model)["thresholds"]``) travel in the same
archive as ``thresholds.txt`` (one number per line, in label order; a file of ours:
the Task Library has no per-label thresholds and ignores it).

Why not ``tflite_support`` itself: its last release (0.4.4) requires
``protobuf<4``, which TensorFlow 2.18-2.21 cannot run with, so it cannot be
installed beside the supported TensorFlow. This module writes the same bytes
with ``flatbuffers`` (a TensorFlow dependency); the test suite checks a file it
wrote with ``tflite_support``'s own reader and Task Library ``ImageClassifier``
when a venv with ``tflite-support`` is given (``TFLITE_SUPPORT_PYTHON``).

Example (``tfx_transfer.read_tflite_labels`` reads a written file back):
    >>> metadata = model_metadata("flowers", "pixels in, probabilities out")
    >>> metadata[4:8], LABELS_FILE
    (b'M001', 'labels.txt')
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import flatbuffers
from flatbuffers import table as fb_table

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry the Task Library looks up
LABELS_FILE = "labels.txt"
THRESHOLDS_FILE = "thresholds.txt"  # multi-label models: one threshold per label, label order
_IDENTIFIER = b"M001"
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_RGB = 1  # ColorSpaceType
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties union
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union


def _table(builder: flatbuffers.Builder, fields: list[tuple[int, str, Any]]) -> int:
    """One table: ``(slot, kind, value)`` with kind ``offset``, ``uint8`` or ``int8``."""
    builder.StartObject(max(slot for slot, _, _ in fields) + 1)
    for slot, kind, value in fields:
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "uint8":
            builder.PrependUint8Slot(slot, value, 0)
        else:
            builder.PrependInt8Slot(slot, value, 0)
    return builder.EndObject()


def _vector(builder: flatbuffers.Builder, items: Sequence[Any], kind: str = "offset") -> int:
    builder.StartVector(4, len(items), 4)
    for item in reversed(items):
        if kind == "float":
            builder.PrependFloat32(float(item))
        else:
            builder.PrependUOffsetTRelative(item)
    return builder.EndVector()


def _stats(builder: flatbuffers.Builder, low: float, high: float) -> int:
    top, bottom = _vector(builder, [high], "float"), _vector(builder, [low], "float")
    return _table(builder, [(0, "offset", top), (1, "offset", bottom)])


def _input_tensor(builder: flatbuffers.Builder, mean: float, std: float) -> int:
    name, description = builder.CreateString("image"), builder.CreateString(
        "RGB pixels, 0..255, decoded and resized to the model's input size")
    image = _table(builder, [(0, "int8", _RGB)])
    content = _table(builder, [(0, "uint8", _IMAGE_PROPERTIES), (1, "offset", image)])
    means, stds = _vector(builder, [mean] * 3, "float"), _vector(builder, [std] * 3, "float")
    norm = _table(builder, [(0, "offset", means), (1, "offset", stds)])
    unit = _table(builder, [(0, "uint8", _NORMALIZATION_OPTIONS), (1, "offset", norm)])
    units, stats = _vector(builder, [unit]), _stats(builder, 0.0, 255.0)
    return _table(builder, [(0, "offset", name), (1, "offset", description), (3, "offset", content),
                            (4, "offset", units), (5, "offset", stats)])


def _output_tensor(builder: flatbuffers.Builder) -> int:
    name, description = builder.CreateString("probability"), builder.CreateString(
        "probabilities of the classes, in the order of labels.txt")
    file_name, file_description = builder.CreateString(LABELS_FILE), builder.CreateString(
        "class names, one a line, in label order")
    label_file = _table(builder, [(0, "offset", file_name), (1, "offset", file_description),
                                  (2, "int8", _TENSOR_AXIS_LABELS)])
    files = _vector(builder, [label_file])
    features = _empty(builder)
    content = _table(builder, [(0, "uint8", _FEATURE_PROPERTIES), (1, "offset", features)])
    stats = _stats(builder, 0.0, 1.0)
    return _table(builder, [(0, "offset", name), (1, "offset", description), (3, "offset", content),
                            (5, "offset", stats), (6, "offset", files)])


def _empty(builder: flatbuffers.Builder) -> int:
    builder.StartObject(0)
    return builder.EndObject()


def model_metadata(name: str, description: str, mean: float = 0.0, std: float = 1.0) -> bytes:
    """The ``ModelMetadata`` flatbuffer of an image classifier (``M001``).

    Args:
        name: the model's name.
        description: one line about the model.
        mean: per-channel mean of the input normalisation ``(pixel - mean) / std``.
        std: per-channel standard deviation of it.

    Example:
        >>> model_metadata("flowers", "a classifier")[4:8]
        b'M001'
    """
    builder = flatbuffers.Builder(1024)
    inputs = _vector(builder, [_input_tensor(builder, mean, std)])
    outputs = _vector(builder, [_output_tensor(builder)])
    subgraph = _table(builder, [(2, "offset", inputs), (3, "offset", outputs)])
    subgraphs = _vector(builder, [subgraph])
    strings = [builder.CreateString(text) for text in (name, description, "1.0.0")]
    root = _table(builder, [(0, "offset", strings[0]), (1, "offset", strings[1]),
                            (3, "offset", subgraphs), (7, "offset", strings[2])])
    builder.Finish(root, file_identifier=_IDENTIFIER)
    return bytes(builder.Output())


def add_metadata(content: bytes, class_names: Sequence[str], name: str, description: str,
                 thresholds: Sequence[float] | None = None) -> bytes:
    """``content`` (a ``.tflite`` flatbuffer) with the image-classifier metadata and its label file.

    The model is re-serialised with TensorFlow's TFLite schema (``tensorflow.lite.python.
    schema_py_generated``, the module TensorFlow's own TFLite tools use; not a public API,
    TensorFlow 2.18-2.21) with one more buffer and a ``TFLITE_METADATA`` entry; the label
    file is appended as a zip archive.

    Args:
        content: the converted model's bytes.
        class_names: the labels, in output order.
        name: the model's name in the metadata.
        description: the model's description in the metadata.
        thresholds: a multi-label model's per-label thresholds (``thresholds.txt``).

    Example (on an empty model; :func:`tfx_transfer.export_tflite` calls it on a converted one):
        >>> import os, tempfile, flatbuffers
        >>> from tensorflow.lite.python import schema_py_generated as schema
        >>> builder = flatbuffers.Builder(64)
        >>> _ = builder.Finish(schema.ModelT().Pack(builder), file_identifier=b"TFL3")
        >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
        >>> _ = open(path, "wb").write(add_metadata(bytes(builder.Output()), ["cat", "dog"], "m", "x"))
        >>> read_tflite_metadata(path)["class_names"]
        ['cat', 'dog']
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    model.buffers = list(model.buffers or [])
    buffer = schema.BufferT()
    buffer.data = list(model_metadata(name, description))
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    with zipfile.ZipFile(out, "a") as archive:  # appended: offsets count from the file's start
        archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in class_names))
        if thresholds is not None:
            if len(thresholds) != len(class_names):
                raise ValueError(f"{len(thresholds)} thresholds for {len(class_names)} labels.")
            archive.writestr(THRESHOLDS_FILE, "".join(f"{float(t)!r}\n" for t in thresholds))
    return out.getvalue()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(tab: fb_table.Table, slot: int) -> int:
    return tab.Offset(4 + 2 * slot)


def _sub(tab: fb_table.Table, slot: int, index: int | None = None) -> fb_table.Table | None:
    """Field ``slot`` as a table (``index`` into a vector of tables)."""
    off = _field(tab, slot)
    if not off:
        return None
    if index is None:
        return fb_table.Table(tab.Bytes, tab.Indirect(off + tab.Pos))
    where = tab.Vector(off) + 4 * index
    return fb_table.Table(tab.Bytes, tab.Indirect(where))


def _length(tab: fb_table.Table, slot: int) -> int:
    off = _field(tab, slot)
    return tab.VectorLen(off) if off else 0


def _floats(tab: fb_table.Table | None, slot: int) -> list[float] | None:
    if tab is None or not _field(tab, slot):
        return None
    start = tab.Vector(_field(tab, slot))
    return [tab.Get(flatbuffers.number_types.Float32Flags, start + 4 * i)
            for i in range(_length(tab, slot))]


def _metadata_buffer(data: bytes) -> bytes | None:
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        if _text(model.Metadata(i).Name()) == METADATA_NAME:
            return model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
    return None


def read_tflite_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The class names and input normalisation a ``.tflite`` file carries (TFLite metadata).

    Returns ``{"name", "labels_file", "class_names", "mean", "std", "thresholds"}``;
    ``class_names`` is ``None`` (and the rest too) for a file without metadata;
    ``thresholds`` is a multi-label model's per-label thresholds, else ``None``.

    Example (a model without metadata; :func:`add_metadata` shows one with):
        >>> import os, tempfile, flatbuffers
        >>> from tensorflow.lite.python import schema_py_generated as schema
        >>> builder = flatbuffers.Builder(64)
        >>> _ = builder.Finish(schema.ModelT().Pack(builder), file_identifier=b"TFL3")
        >>> path = os.path.join(tempfile.mkdtemp(), "plain.tflite")
        >>> _ = open(path, "wb").write(builder.Output())
        >>> read_tflite_metadata(path)["class_names"] is None
        True
    """
    data = open(path, "rb").read()  # FileNotFoundError names the file
    found = {"name": None, "labels_file": None, "class_names": None, "mean": None, "std": None,
             "thresholds": None}
    raw = _metadata_buffer(data)
    if raw is None:
        return found
    root = fb_table.Table(bytearray(raw), flatbuffers.encode.Get(
        flatbuffers.packer.uoffset, bytearray(raw), 0))
    found["name"] = _string(root, 0)
    subgraph = _sub(root, 3, 0)
    image = _sub(subgraph, 2, 0) if subgraph is not None else None
    unit = _sub(image, 4, 0) if image is not None and _length(image, 4) else None
    norm = _sub(unit, 1) if unit is not None else None
    found["mean"], found["std"] = _floats(norm, 0), _floats(norm, 1)
    output = _sub(subgraph, 3, 0) if subgraph is not None else None
    for i in range(_length(output, 6) if output is not None else 0):
        entry = _sub(output, 6, i)
        if entry.GetSlot(8, 0, flatbuffers.number_types.Int8Flags) == _TENSOR_AXIS_LABELS:
            found["labels_file"] = _string(entry, 0)
            break
    if found["labels_file"]:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            text = archive.read(found["labels_file"]).decode("utf-8")
            if THRESHOLDS_FILE in archive.namelist():
                found["thresholds"] = [float(line) for line in
                                       archive.read(THRESHOLDS_FILE).decode().split()]
        found["class_names"] = [line.strip() for line in text.splitlines() if line.strip()]
    return found


def _string(tab: fb_table.Table, slot: int) -> str | None:
    off = _field(tab, slot)
    return tab.String(off + tab.Pos).decode("utf-8") if off else None


def read_tflite_labels(path: str | os.PathLike) -> list[str]:
    """The class names inside a ``.tflite`` file (its label file, as the Task Library reads it).

    Raises ``ValueError`` for a file without them (written before labels were added, or by
    another tool without metadata).

    Example:
        >>> import keras, os, tempfile, tfx_transfer as tt
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
        ...                           keras.layers.Dense(3, activation="softmax")])
        >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
        >>> _ = tt.export_tflite(model, path, quantization=None, class_names=["a", "b", "c"],
        ...                      check=False)
        >>> tt.read_tflite_labels(path)
        ['a', 'b', 'c']
    """
    names = read_tflite_metadata(path)["class_names"]
    if not names:
        raise ValueError(f"{os.fspath(path)} carries no class names (no TFLite metadata with a "
                         "label file); export it again with export_tflite(..., class_names=[...]) "
                         "or `tfx-transfer export`.")
    return names
