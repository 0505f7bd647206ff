"""One loaded version of a model: its signatures, their specs, and per-request image decoding."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from tfx_transfer.serving.protocol import SIGNATURE_DEFAULT, RequestError, decode_reason


def _tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 127, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def signature_defs(path: str | Path) -> dict:
    """The SignatureDefMap of ``<path>/saved_model.pb`` as TF Serving's JSON (proto field names).

    Example (any SavedModel):
        >>> import tempfile, tensorflow as tf
        >>> module = tf.Module()
        >>> module.double = tf.function(lambda x: {"y": 2 * x},
        ...                             input_signature=[tf.TensorSpec([None], tf.float32)])
        >>> path = tempfile.mkdtemp()
        >>> tf.saved_model.save(module, path, signatures=module.double)
        >>> defs = signature_defs(path)
        >>> list(defs), defs["serving_default"]["inputs"]["x"]["dtype"]  # TF Serving lists both
        (['__saved_model_init_op', 'serving_default'], 'DT_FLOAT')
    """
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0]
    return {
        name: json_format.MessageToDict(graph.signature_def[name], preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
        for name in sorted(graph.signature_def)
    }


class Servable:
    """One version of the model, loaded: its signatures and their input/output specs.

    For an export of :func:`tfx_transfer.export_saved_model` (it has
    ``assets.extra/metadata.json``), a ``serving_default`` request is
    :meth:`prepare`-d in the request's thread: each image is decoded and
    resized with :func:`tfx_transfer.data.decode.decode_and_resize` -- the very
    function the export's graph runs, at the export's ``image_size`` and
    ``crop_to_aspect_ratio`` -- and the ``uint8`` pixels go to the export's
    ``predict_pixels_uint8`` signature, which passes pixels at the model size
    unchanged to the same network and returns the same outputs. So a bad image
    fails its own request before batching, decoding runs in parallel across
    requests, and the batching thread only runs the network. Any other
    SavedModel's signatures are called as they are.

    Attributes:
        version: the folder's number.
        path: the version folder.
        signatures: name -> concrete function (``tf.saved_model.load(...).signatures``).
        inputs: signature name -> {input name: ``tf.TensorSpec``}.
        signature_defs: signature name -> SignatureDef as TF Serving's metadata JSON.
        image_size: ``(height, width)`` of an export whose images are decoded per request, else None.

    Example:
        >>> import tempfile, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3), weights=None)
        >>> path = tt.export_saved_model(model, tempfile.mkdtemp() + "/flowers", ["daisy", "rose"])
        >>> servable = Servable(path, 1)
        >>> sorted(servable.inputs["serving_default"]), servable.image_size
        (['images'], (32, 32))
        >>> from PIL import Image
        >>> png = io.BytesIO()
        >>> Image.new("RGB", (48, 40)).save(png, "PNG")
        >>> signature, inputs = servable.prepare("serving_default",
        ...                                      {"images": np.array([png.getvalue()], object)})
        >>> signature, inputs["pixels"].shape
        ('predict_pixels_uint8', (1, 32, 32, 3))
    """

    def __init__(self, path: str | Path, version: int) -> None:
        import tensorflow as tf

        from tfx_transfer.data.decode import decode_and_resize
        from tfx_transfer.export.saved_model import METADATA_FILE
        from tfx_transfer.export.signatures import SIGNATURE_IMAGES, SIGNATURE_PIXELS_UINT8

        self.path, self.version = Path(path), int(version)
        self._model = tf.saved_model.load(str(self.path))
        self.signatures = dict(self._model.signatures)
        if not self.signatures:
            raise ValueError(f"{str(self.path)!r} has no serving signatures.")
        self.inputs = {name: dict(fn.structured_input_signature[1])
                       for name, fn in self.signatures.items()}
        self.signature_defs = signature_defs(self.path)
        self.image_size: tuple[int, int] | None = None
        meta_file = self.path / "assets.extra" / METADATA_FILE
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        self.label_names: list[str] | None = (
            list(meta["class_names"]) if meta.get("multi_label") and meta.get("class_names") else None)
        images = self.inputs.get(SIGNATURE_IMAGES, {})
        if (meta and SIGNATURE_PIXELS_UINT8 in self.signatures
                and list(images) == ["images"] and images["images"].dtype == tf.string):
            given = meta["image_size"] if "image_size" in meta else meta["input_size"]  # older exports
            size = (int(given[0]), int(given[1]))
            crop = bool(meta.get("crop_to_aspect_ratio", False))
            self.image_size = size
            self._decode = tf.function(lambda data: decode_and_resize(data, size, crop),
                                       input_signature=[tf.TensorSpec([], tf.string)])

    def prepare(self, signature: str, inputs: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
        """The call to batch for a request: decoded pixels for an export's images, else as given.

        Raises:
            RequestError: 400 naming the first image that cannot be decoded.
        """
        import tensorflow as tf

        from tfx_transfer.export.signatures import (
            SERVING_FORMATS,
            SIGNATURE_IMAGES,
            SIGNATURE_PIXELS_UINT8,
        )

        if self.image_size is None or signature != SIGNATURE_IMAGES:
            return signature, inputs
        pixels = []
        for i, data in enumerate(inputs["images"].reshape(-1)):
            try:
                pixels.append(self._decode(tf.constant(data)).numpy())
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
                raise RequestError(400, f"images[{i}] ({len(data)} bytes): "
                                        f"{decode_reason(err.message)}; send the file's bytes "
                                        f"of a {SERVING_FORMATS} image.") from None
        return SIGNATURE_PIXELS_UINT8, {"pixels": np.stack(pixels)}

    def add_labels(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A multi-label export's outputs plus ``labels``: per image, every label whose
        ``above_threshold`` is set, best first, as ``{"class", "score"}`` (what
        ``tfx-transfer predict --json`` prints); other outputs are returned as they are.

        ``above_threshold`` covers all C labels but ``class_names`` only the top ``k``: without
        ``labels`` a label above its threshold outside the top ``k`` has no name in the answer.
        """
        if self.label_names is None or not {"above_threshold", "probabilities"} <= set(outputs):
            return outputs
        above, probabilities = np.asarray(outputs["above_threshold"]), np.asarray(outputs["probabilities"])
        labels = np.empty(len(above), dtype=object)
        for i, (flags, row) in enumerate(zip(above, probabilities)):
            labels[i] = [{"class": self.label_names[j], "score": float(row[j])}
                         for j in np.argsort(-row, kind="stable") if flags[j]]
        return {**outputs, "labels": labels}

    def warm_up(self) -> None:
        """Run a tiny PNG through ``serving_default`` and the per-request route, so a broken
        version is never switched to and the first request is not slow."""
        import tensorflow as tf

        specs = self.inputs.get(SIGNATURE_DEFAULT)
        if not specs or not all(s.dtype == tf.string and s.shape.rank == 1 for s in specs.values()):
            return
        self.signatures[SIGNATURE_DEFAULT](**{n: tf.constant([_tiny_png()]) for n in specs})
        if self.image_size is not None:
            signature, inputs = self.prepare(SIGNATURE_DEFAULT, {"images": np.array([_tiny_png()])})
            self.signatures[signature](**{n: tf.constant(a) for n, a in inputs.items()})

    def __repr__(self) -> str:
        return f"Servable(version={self.version}, path={str(self.path)!r})"
