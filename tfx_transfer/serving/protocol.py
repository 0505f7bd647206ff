"""TF Serving's REST protocol: routes, request parsing, the JSON <-> tensor codec, responses.

The request and response shapes of ``tensorflow_serving/g3doc/api_rest.md``:
row (``"instances"``) and columnar (``"inputs"``) predict requests, binary values
as ``{"b64": "..."}`` objects, errors as ``{"error": "..."}`` with the HTTP
status carried by :class:`RequestError`. Nothing here loads a model: a request
is checked against a servable's input specs (``signatures`` and ``inputs``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tfx_transfer.serving.servable import Servable

SIGNATURE_DEFAULT = "serving_default"  # TF Serving's signature when a request names none

ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$"
)


class RequestError(Exception):
    """A request the server refuses: ``status`` (HTTP) and a message for ``{"error": ...}``.

    Example:
        >>> RequestError(404, "Servable not found for request: Latest(tulips)").status
        404
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _unwrap_b64(value: Any, where: str) -> Any:
    """Replace every ``{"b64": "..."}`` by its bytes (recursively)."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise RequestError(400, f"{where}: an object here must be {{\"b64\": \"...\"}} "
                                    f"(binary data), got keys {sorted(value)}.")
        text = value["b64"]
        if not isinstance(text, str):
            raise RequestError(400, f"{where}: \"b64\" must be a base64 string, got "
                                    f"{type(text).__name__}.")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(400, f"{where}: invalid base64 ({err}); encode the file's bytes "
                                    "with standard base64 (e.g. `base64 -w0 cat.jpg`).") from None
    if isinstance(value, list):
        return [_unwrap_b64(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _to_array(values: list, spec: Any, where: str) -> np.ndarray:
    """Rows of one input (already b64-decoded) to a numpy array of the input's dtype and rank."""
    import tensorflow as tf

    if spec.dtype == tf.string:
        def as_bytes(v: Any) -> Any:
            if isinstance(v, list):
                return [as_bytes(x) for x in v]
            if isinstance(v, str):
                return v.encode("utf-8")
            if isinstance(v, bytes):
                return v
            raise RequestError(400, f"{where}: expected strings or {{\"b64\": ...}} for a "
                                    f"tf.string input, got {type(v).__name__} {v!r:.40}.")
        converted = as_bytes(values)
        try:
            array = np.array(converted, dtype=object)
        except ValueError as err:
            raise RequestError(400, f"{where}: ragged nested lists ({err}).") from None
        if array.dtype != object or any(not isinstance(v, bytes) for v in array.reshape(-1)):
            raise RequestError(400, f"{where}: ragged nested lists of strings.")
    else:
        dtype = spec.dtype.as_numpy_dtype
        try:
            array = np.array(values, dtype=dtype)
        except (ValueError, TypeError) as err:
            raise RequestError(400, f"{where}: cannot read the values as {spec.dtype.name} ({err}); "
                                    "send numbers in nested lists of equal lengths.") from None
    rank = spec.shape.rank
    if rank is not None:
        dims = spec.shape.as_list()
        ok = array.ndim == rank and all(d is None or d == a for d, a in zip(dims, array.shape))
        if not ok:
            shape = [d if d is not None else -1 for d in dims]
            raise RequestError(400, f"{where}: got shape {list(array.shape)}, the input takes "
                                    f"{spec.dtype.name} {shape} (-1: any size).")
    return array


def _signature_of(body: Any, servable: Servable) -> str:
    """The signature a predict body names (checked against the servable), after the body's keys."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object with \"instances\" "
                                f"or \"inputs\", got a JSON {type(body).__name__}.")
    unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise RequestError(400, f"Unknown request field(s) {unknown}; a predict request has "
                                "\"instances\" (row form) or \"inputs\" (columnar) and optionally "
                                "\"signature_name\".")
    signature = body.get("signature_name") or SIGNATURE_DEFAULT
    if not isinstance(signature, str) or signature not in servable.signatures:
        raise RequestError(400, f"Serving signature name: {json.dumps(signature)} not found in "
                                f"signature def; this model has {sorted(servable.signatures)}.")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError(400, "Missing 'inputs' or 'instances' key: a predict request needs "
                                "exactly one of them.")
    return signature


def _row_inputs(instances: Any, specs: dict, signature: str) -> dict[str, np.ndarray]:
    """The arrays of a row-form request: ``"instances"``, one item (or object of inputs) per row."""
    names = sorted(specs)
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, "\"instances\" must be a non-empty list, one item per example, "
                                "e.g. [{\"b64\": \"...\"}].")
    columns: dict[str, list] = {n: [] for n in names}
    for i, item in enumerate(instances):
        named = isinstance(item, dict) and "b64" not in item
        if not named:
            if len(names) != 1:
                raise RequestError(400, f"instances[{i}] must be an object with the inputs "
                                        f"{names} of signature {signature!r}.")
            item = {names[0]: item}
        if sorted(item) != names:
            raise RequestError(400, f"instances[{i}] has keys {sorted(item)}; signature "
                                    f"{signature!r} takes the inputs {names}.")
        for n in names:
            columns[n].append(_unwrap_b64(item[n], f"instances[{i}].{n}"))
    return {n: _to_array(columns[n], specs[n], f"instances ({n})") for n in names}


def _columnar_inputs(given: Any, specs: dict, signature: str) -> dict[str, np.ndarray]:
    """The arrays of a columnar request: ``"inputs"``, one list per input (or the only input's)."""
    names = sorted(specs)
    if not (isinstance(given, dict) and "b64" not in given):
        if len(names) != 1:
            raise RequestError(400, f"\"inputs\" must be an object with the inputs {names} of "
                                    f"signature {signature!r}.")
        given = {names[0]: given}
    if sorted(given) != names:
        raise RequestError(400, f"\"inputs\" has keys {sorted(given)}; signature {signature!r} "
                                f"takes the inputs {names}.")
    return {n: _to_array(_unwrap_b64(given[n], f"inputs.{n}"), specs[n], f"inputs.{n}")
            for n in names}


def parse_predict(body: Any, servable: Servable) -> tuple[str, dict[str, np.ndarray], bool]:
    """``(signature, inputs, row_form)`` from a decoded predict request body.

    ``servable`` needs ``signatures`` (name -> callable) and ``inputs``
    (name -> {input name: ``tf.TensorSpec``}), as :class:`~tfx_transfer.serving.servable.Servable` has.

    Raises:
        RequestError: 400 naming what is wrong with the body and what the signature takes.

    Example:
        >>> import types, tensorflow as tf
        >>> model = types.SimpleNamespace(signatures={"serving_default": None},
        ...     inputs={"serving_default": {"images": tf.TensorSpec([None], tf.string)}})
        >>> signature, inputs, row_form = parse_predict({"instances": [{"b64": "aGk="}]}, model)
        >>> signature, inputs["images"].tolist(), row_form
        ('serving_default', [b'hi'], True)
        >>> parse_predict({"inputs": [{"b64": "aGk="}, "there"]}, model)[1]["images"].tolist()
        [b'hi', b'there']
    """
    signature = _signature_of(body, servable)
    specs = servable.inputs[signature]
    if "instances" in body:
        return signature, _row_inputs(body["instances"], specs, signature), True
    return signature, _columnar_inputs(body["inputs"], specs, signature), False


def decode_reason(message: str) -> str:
    """TensorFlow's image decode error, without the op and device noise.

    Example:
        >>> decode_reason("Unknown image file format. One of JPEG, PNG, GIF, BMP required.")
        ... # doctest: +ELLIPSIS
        'not a JPEG, PNG, GIF... image'
    """
    from tfx_transfer.export.signatures import SERVING_FORMATS

    if "Unknown image file format" in message:
        return f"not a {SERVING_FORMATS} image"
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*", "", message).strip()
    return f"corrupt or truncated image data ({text.splitlines()[0] if text else 'no detail'})"


def _jsonable(value: np.ndarray, name: str) -> Any:
    """An output tensor to JSON values: strings as text (``*_bytes`` outputs or non-UTF-8 as b64)."""
    if value.dtype != object:
        return value.tolist()

    def convert(v: Any) -> Any:
        if isinstance(v, list):
            return [convert(x) for x in v]
        if isinstance(v, bytes):
            if not name.endswith("_bytes"):
                try:
                    return v.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(v).decode("ascii")}
        return v

    return convert(value.tolist())


def predict_response(outputs: dict[str, np.ndarray], row_form: bool) -> dict:
    """The JSON body answering a predict call: ``"predictions"`` (row form) or ``"outputs"``.

    Raises:
        RequestError: 400 when a row-form answer is asked of outputs of different batch sizes.

    Example:
        >>> outputs = {"scores": np.array([[0.9], [0.6]]),
        ...            "names": np.array([[b"rose"], [b"tulip"]], object)}  # tf.string as numpy
        >>> predict_response(outputs, row_form=True)
        {'predictions': [{'names': ['rose'], 'scores': [0.9]}, {'names': ['tulip'], 'scores': [0.6]}]}
        >>> predict_response({"y": np.array([1, 2])}, row_form=False)
        {'outputs': [1, 2]}
    """
    names = sorted(outputs)
    if not row_form:
        if len(names) == 1:
            return {"outputs": _jsonable(outputs[names[0]], names[0])}
        return {"outputs": {n: _jsonable(outputs[n], n) for n in names}}
    if len(names) == 1:
        return {"predictions": _jsonable(outputs[names[0]], names[0])}
    columns = {n: _jsonable(outputs[n], n) for n in names}
    rows = {len(c) if isinstance(c, list) else -1 for c in columns.values()}
    if len(rows) != 1 or -1 in rows:
        raise RequestError(400, "The signature's outputs do not share the batch size; use the "
                                "columnar form (\"inputs\") for this signature.")
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(rows.pop())]}
