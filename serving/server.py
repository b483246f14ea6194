"""A model server that speaks TensorFlow Serving's gRPC and REST APIs.

For development, tests and machines without Docker: the same flags, the same
`PredictionService` and `ModelService` gRPC API and the same REST endpoints as
`tensorflow_model_server`, so a client (ours, or any TensorFlow Serving client)
works against either unchanged.

    python -m serving.server --port=8500 --rest_api_port=8501 \\
        --model_name=transformer --model_base_path=$PWD/models/transformer \\
        --enable_batching --batching_parameters_file=serving/batching.config
"""

import argparse
import base64
import functools
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Optional

import grpc
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_status_pb2  # noqa: E402
from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

from serving.batching import BatchingParameters  # noqa: E402
from serving.batching import parse_batching_parameters  # noqa: E402
from serving.errors import ServingError  # noqa: E402
from serving.errors import StatusCode  # noqa: E402
from serving.servables import DEFAULT_SIGNATURE  # noqa: E402
from serving.servables import STATE_NAMES  # noqa: E402
from serving.servables import ModelManager  # noqa: E402

log = logging.getLogger("serving")


def _dims(name: str, proto) -> tuple:
    """A TensorProto's shape; every size must be >= 0 (-1, "unknown", is not a value's shape)."""
    dims = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in dims):
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\" has a negative dimension: {list(dims)}")
    return dims


def _tensor_to_array(name: str, proto, dims: tuple) -> np.ndarray:
    # A TensorProto with fewer values than its shape holds is filled with
    # its last value (tf.make_ndarray does so): a few bytes could then ask
    # for gigabytes. A string tensor must carry every value; a numeric one
    # may be filled up to what a message could plausibly carry.
    elements = int(np.prod(dims, dtype=np.float64))
    if proto.dtype == tf.string.as_datatype_enum and len(proto.string_val) != elements:
        raise ServingError(
            StatusCode.INVALID_ARGUMENT,
            f"input \"{name}\" has shape {list(dims)} ({elements} values) but carries "
            f"{len(proto.string_val)} strings",
        )
    if elements * 8 > max(16 << 20, 8 * proto.ByteSize()):
        raise ServingError(
            StatusCode.INVALID_ARGUMENT,
            f"input \"{name}\" declares {elements} elements in a {proto.ByteSize()}-byte TensorProto",
        )
    try:
        return tf.make_ndarray(proto)
    except Exception as error:
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\" is not a valid TensorProto: {error}") from None


def _dtype(name: str, enum: int) -> tf.DType:
    """A TensorProto's dtype enum as a tf.DType (DT_INVALID reads as float32, as an
    unset field does); an enum TensorFlow does not know is INVALID_ARGUMENT."""
    if not enum:
        return tf.float32
    try:
        return tf.dtypes.as_dtype(enum)
    except (TypeError, ValueError):
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\" has an unknown dtype enum {enum}") from None


def _version(spec) -> Optional[int]:
    if spec.WhichOneof("version_choice") == "version_label":
        raise ServingError(
            StatusCode.INVALID_ARGUMENT,
            # As TensorFlow Serving without version labels (model_servers/server_core.cc).
            f"Unrecognized servable version label: {spec.version_label}",
        )
    return spec.version.value if spec.HasField("version") else None


def _grpc_method(method):
    """A gRPC handler that answers every failure with a status: a `ServingError`
    with its own code, anything unexpected with INTERNAL and a message (the
    server logs it and stays up), never grpc's bare UNKNOWN."""

    @functools.wraps(method)
    def handler(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            message, code = error.message, error.code
        except Exception as error:
            log.exception("gRPC %s failed", method.__name__)
            message, code = f"{type(error).__name__}: {error}"[:500], StatusCode.INTERNAL
        context.abort(code, message)

    return handler


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    @_grpc_method
    def Predict(self, request, context):
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        # Check types and shapes against the signature before building arrays.
        with self.manager.serve(request.model_spec.name, _version(request.model_spec)) as loaded:
            dims = {k: _dims(k, v) for k, v in request.inputs.items()}
            loaded.check_inputs(signature, {k: _dtype(k, v.dtype) for k, v in request.inputs.items()}, dims)
            inputs = {k: _tensor_to_array(k, v, dims[k]) for k, v in request.inputs.items()}
            outputs = loaded.run(signature, inputs, tuple(request.output_filter), checked=True)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = loaded.name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = signature
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    @_grpc_method
    def GetModelMetadata(self, request, context):
        fields = set(request.metadata_field)
        if fields != {"signature_def"}:
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"metadata_field must be [\"signature_def\"], got {sorted(fields)}",
            )
        with self.manager.serve(request.model_spec.name, _version(request.model_spec)) as loaded:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = loaded.name
            response.model_spec.version.value = loaded.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in loaded.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(signature_map)
            return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    @_grpc_method
    def GetModelStatus(self, request, context):
        rows = self.manager.status(request.model_spec.name, _version(request.model_spec))
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state, message in rows:
            status = response.model_version_status.add(version=number, state=state)
            if message:
                status.status.error_code = StatusCode.UNKNOWN.value[0]
                status.status.error_message = message
        return response


# ---------------------------------------------------------------- REST


# TensorFlow Serving's REST routes (tensorflow_serving/model_servers/http_rest_api_util.cc:
# kPredictionApiGegex, kModelStatusApiRegex), case-insensitive; anything else is a
# "Malformed request" (INVALID_ARGUMENT, HTTP 400).
_POST_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?:(?P<method>classify|regress|predict)",
    re.IGNORECASE,
)
_GET_PATH = re.compile(
    r"/v1/models(?:/(?P<name>[^/:]+))?(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?:/(?P<metadata>metadata))?",
    re.IGNORECASE,
)


def _parse_path(method: str, path: str):
    """(model name, version or None) of a REST path, as TensorFlow Serving parses it."""
    # The route is the path alone: a query string does not change it (TensorFlow
    # Serving matches the URI's path).
    match = (_POST_PATH if method == "POST" else _GET_PATH).fullmatch(urllib.parse.urlsplit(path).path)
    if not match:
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {path[:200]}")
    name = urllib.parse.unquote(match["name"] or "")
    if not name:
        raise ServingError(StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
    if match["label"]:
        raise ServingError(
            StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {urllib.parse.unquote(match['label'])}"
        )
    version = None
    if match["version"]:
        if len(match["version"]) > 19 or int(match["version"]) >= 2**63:
            # As TensorFlow Serving's absl::SimpleAtoi failing (http_rest_api_util.cc, ParseModelInfo).
            raise ServingError(StatusCode.INVALID_ARGUMENT, f"Failed to convert version: {match['version'][:40]} to numeric.")
        version = int(match["version"])
    return name, version, match


def _json_value(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _to_json(array: np.ndarray):
    if array.dtype == object:
        return np.vectorize(_json_value, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def _from_json(name: str, value, dtype: tf.DType) -> np.ndarray:
    # TensorFlow Serving's JSON reader takes each value only in its tensor's own
    # JSON type: strings (or {"b64": ...}) for a string tensor, integers for an
    # integer one, numbers for a float one, booleans for a bool one
    # (tensorflow_serving/util/json_tensor.cc). NumPy alone would turn 3.9 or
    # "5" into an int id.
    if dtype == tf.string:
        accepted, kind = (str,), "a string"
    elif dtype == tf.bool:
        accepted, kind = (bool,), "a boolean"
    elif dtype.is_integer:
        accepted, kind = (int,), "an integer"
    else:
        accepted, kind = (int, float), "a number"

    def decode(item):
        if isinstance(item, list):
            return [decode(i) for i in item]
        if isinstance(item, dict) and dtype == tf.string:
            if set(item) != {"b64"}:
                raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\": objects must be {{\"b64\": ...}}")
            return base64.b64decode(item["b64"], validate=True)  # "!!" is an error, not b""
        if not isinstance(item, accepted) or (isinstance(item, bool) and bool not in accepted):
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"input \"{name}\" is a {dtype.name} tensor, but a value is {json.dumps(item)[:40]} "
                f"({'null' if item is None else type(item).__name__}), not {kind}",
            )
        return item.encode("utf-8") if dtype == tf.string else item

    try:
        array = np.array(decode(value), dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
    except (TypeError, ValueError, OverflowError) as error:
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\" does not convert to {dtype.name}: {error}") from None
    except RecursionError:
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\" is nested too deeply") from None
    if array.dtype == object and not all(isinstance(item, bytes) for item in array.flat):
        raise ServingError(
            StatusCode.INVALID_ARGUMENT, f"input \"{name}\": lists of unequal lengths (a tensor must be rectangular)"
        )
    return array


def rest_predict(manager: ModelManager, name: str, version: Optional[int], body: dict) -> dict:
    """TensorFlow Serving's `:predict`: row ("instances") or columnar ("inputs") format."""
    signature = _signature_name(body)
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(StatusCode.INVALID_ARGUMENT, "the request needs exactly one of \"instances\" or \"inputs\"")
    with manager.serve(name, version) as loaded:
        if signature not in loaded.inputs:
            loaded.check_inputs(signature, {}, {})  # raises NOT_FOUND with the signature list
        specs = loaded.inputs[signature]
        if "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list):
                raise ServingError(StatusCode.INVALID_ARGUMENT, "\"instances\" must be a list")
            if instances and all(isinstance(i, dict) and "b64" not in i for i in instances):
                keys = set(instances[0])
                if any(set(i) != keys for i in instances):
                    raise ServingError(StatusCode.INVALID_ARGUMENT, "every instance must have the same keys")
                columns = {k: [i[k] for i in instances] for k in keys}
            elif len(specs) == 1:
                columns = {next(iter(specs)): instances}
            else:
                raise ServingError(
                    StatusCode.INVALID_ARGUMENT,
                    f"signature \"{signature}\" takes {sorted(specs)}: give each instance as an object with those keys",
                )
        else:
            columns = body["inputs"]
            if not isinstance(columns, dict):
                if len(specs) != 1:
                    raise ServingError(StatusCode.INVALID_ARGUMENT, f"\"inputs\" must be an object with keys {sorted(specs)}")
                columns = {next(iter(specs)): columns}
        arrays = {}
        for key, value in columns.items():
            dtype = specs[key].dtype if key in specs else tf.string
            arrays[key] = _from_json(key, value, dtype)
        outputs = loaded.run(signature, arrays)
    if "instances" in body:
        if len(outputs) == 1:
            return {"predictions": _to_json(next(iter(outputs.values())))}
        rows = len(next(iter(outputs.values())))
        return {"predictions": [{k: _to_json(v[i]) if isinstance(v[i], np.ndarray) else _json_value(v[i])
                                 for k, v in outputs.items()} for i in range(rows)]}
    if len(outputs) == 1:
        # One output: its value alone, unnamed, as TensorFlow Serving writes it
        # (tensorflow_serving/util/json_tensor.cc, MakeColumnarFormatJsonFromTensors).
        return {"outputs": _to_json(next(iter(outputs.values())))}
    return {"outputs": {k: _to_json(v) for k, v in outputs.items()}}


def _signature_name(body: dict) -> str:
    signature = body.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"\"signature_name\" must be a string, got {json.dumps(signature)[:40]}")
    return signature or DEFAULT_SIGNATURE


def rest_classify_or_regress(manager: ModelManager, name: str, version: Optional[int], method: str, body: dict):
    """`:classify` and `:regress`, answered as TensorFlow Serving answers them for a
    model whose signature is not of that method (every export of this library):
    the request is checked (tensorflow_serving/util/json_tensor.cc), then the
    signature's method (servables/tensorflow/classifier.cc, regressor.cc)."""
    if not isinstance(body.get("examples"), list):
        said = "is expected and was not found" if "examples" not in body else "must be a list"
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"When method is {method}, key 'examples' {said}")
    signature = _signature_name(body)
    with manager.serve(name, version) as loaded:
        if signature not in loaded.signature_defs:
            loaded.check_inputs(signature, {}, {})  # raises FAILED_PRECONDITION with the signature list
        expected = "tensorflow/serving/" + method
        found = loaded.signature_defs[signature].method_name
        if found != expected:
            kind = "classification" if method == "classify" else "regression"
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"Expected {kind} signature method_name to be {expected}. Was: {found}",
            )
    raise ServingError(StatusCode.UNIMPLEMENTED, f"this server runs only predict signatures, not {method}")


def rest_status(manager: ModelManager, name: str, version: Optional[int]) -> dict:
    return {
        "model_version_status": [
            {
                "version": str(number),
                "state": STATE_NAMES[state],
                "status": {"error_code": "UNKNOWN" if message else "OK", "error_message": message},
            }
            for number, state, message in manager.status(name, version)
        ]
    }


def rest_metadata(manager: ModelManager, name: str, version: Optional[int]) -> dict:
    with manager.serve(name, version) as loaded:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in loaded.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        return {
            "model_spec": {"name": loaded.name, "version": str(loaded.version), "signature_name": ""},
            # Proto field names, default values printed, as TensorFlow Serving's JSON
            # (tensorflow_serving/model_servers/http_rest_api_util.cc, ToJsonString).
            "metadata": {"signature_def": json_format.MessageToDict(
                signature_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
            )},
        }


def make_rest_handler(manager: ModelManager, max_body_bytes: int, timeout_seconds: float = 30.0):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TensorFlow Serving's --rest_api_timeout_in_ms, twice: as the
        # socket's timeout (a client silent that long is answered 408, or
        # dropped before its request line), and as a deadline for the whole
        # request from its first line to its last byte, kept by the server's
        # reaper, so a client that sends a byte now and then cannot hold a
        # thread either. The reaper only shuts the connection for reading;
        # this thread, the only writer, then answers 408.
        timeout = timeout_seconds

        def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's name)
            log.debug("rest: " + format, *args)

        def handle_one_request(self):
            self._replied = False
            self._deadline = self.server.arm(self, timeout_seconds)
            try:
                super().handle_one_request()
            finally:
                self.server.finish(self._deadline)
            if self._deadline.expired:
                self.close_connection = True

        def _arrived(self) -> bool:
            """The request has been read in full; False if its deadline passed first."""
            return self.server.claim(self._deadline)

        # A two-word request line is HTTP/0.9 to http.server, which then sends
        # its error without a status line; answer as HTTP/1.0 instead, and refuse it.
        default_request_version = "HTTP/1.0"

        def parse_request(self):
            # The request's clock starts with its first line, not with the
            # idle wait before it on a kept-alive connection.
            self.server.rearm(self._deadline, timeout_seconds)
            if not super().parse_request():
                return False
            if len(self.requestline.split()) != 3:
                self.send_error(400, "HTTP/0.9 requests are not supported")
                return False
            framing = [self.headers.get_all(name) or [] for name in ("Content-Length", "Transfer-Encoding")]
            if any(len(values) > 1 for values in framing):
                # Repeated framing headers: a proxy may read them otherwise (RFC 9112, 6.3).
                self.send_error(400, "Content-Length and Transfer-Encoding may each appear only once")
                return False
            if self.command != "POST" and any(framing):
                self.close_connection = True  # a body that is never read is never read as a request
            return True

        def _reply(self, status: int, body: dict):
            if self._replied:
                return  # one answer per request, even when writing the first one failed
            self._replied = True
            if not self._arrived():
                status, body = 408, {"error": f"the request did not arrive in full within {timeout_seconds:g} s"}
            if status >= 400 or self.server.saturated() or self.server.stopping():
                # After an error the rest of the stream may be an unread
                # body: close rather than read it as the next request. With
                # every thread busy, an idle keep-alive connection would hold
                # one: close it too.
                self.close_connection = True
            data = json.dumps(body).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client left or stopped reading: nothing more to say to it
                self.close_connection = True

        def _read_body(self):
            """The request body, or None once answered: Content-Length or chunked
            (RFC 9112), at most `max_body_bytes`, within the request's deadline."""
            encoding = self.headers.get("Transfer-Encoding")
            declared = self.headers.get("Content-Length")
            if encoding is not None and declared is not None:
                # Both: a request-smuggling pattern (RFC 9112, 6.1); refuse it and close.
                raise ServingError(StatusCode.INVALID_ARGUMENT, "a request must not have both Content-Length and Transfer-Encoding")
            if encoding is not None and encoding.strip().lower() != "chunked":
                self._reply(501, {"error": f"Transfer-Encoding {encoding[:40]!r} is not supported (only chunked)"})
                return None
            try:
                if encoding is not None:
                    raw = self._read_chunked()
                else:
                    declared = "0" if declared is None else declared.strip()  # present but empty is an error
                    if not re.fullmatch(r"[0-9]{1,19}", declared):
                        raise ServingError(
                            StatusCode.INVALID_ARGUMENT,
                            f"Content-Length must be a non-negative integer. Received: {declared[:40]!r}",
                        )
                    size = int(declared)
                    if size > max_body_bytes:
                        raise _TooLarge(size)  # refused from the header: the body is not read
                    raw = self.rfile.read(size)
                    if len(raw) < size:
                        raise TimeoutError
            except _TooLarge as error:
                self._reply(413, {"error": f"request body of {error.args[0]} bytes exceeds the limit of {max_body_bytes}"})
                return None
            except (TimeoutError, OSError):
                self._reply(408, {"error": f"the request body did not arrive within {timeout_seconds:g} s"})
                return None
            if not self._arrived():
                self._reply(408, {})  # too late: _reply answers 408
                return None
            return raw

        def _read_chunked(self) -> bytes:
            body = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise TimeoutError
                size_text = line[:-2].split(b";", 1)[0]
                if not line.endswith(b"\r\n") or not re.fullmatch(rb"[0-9A-Fa-f]{1,15}", size_text):
                    raise ServingError(StatusCode.INVALID_ARGUMENT, f"malformed chunk size line {line[:40]!r}")
                size = int(size_text, 16)
                if size == 0:
                    for _ in range(100):  # trailer fields, up to the blank line
                        trailer = self.rfile.readline(8192)
                        if not trailer:
                            raise TimeoutError
                        if trailer == b"\r\n":
                            return bytes(body)
                        if not trailer.endswith(b"\r\n"):  # a bare LF: a proxy may frame it otherwise
                            raise ServingError(StatusCode.INVALID_ARGUMENT, "a trailer line does not end with CRLF")
                    raise ServingError(StatusCode.INVALID_ARGUMENT, "too many trailer fields")
                if len(body) + size > max_body_bytes:
                    raise _TooLarge(f"over {max_body_bytes}")
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise TimeoutError
                body += chunk
                if self.rfile.read(2) != b"\r\n":
                    raise ServingError(StatusCode.INVALID_ARGUMENT, "a chunk does not end with CRLF")

        def _route(self, method: str):
            if method == "GET" and not self._arrived():
                return self._reply(408, {})
            try:
                name, version, match = _parse_path(method, self.path)
                if method == "GET":
                    if match["metadata"]:
                        return self._reply(200, rest_metadata(manager, name, version))
                    return self._reply(200, rest_status(manager, name, version))
                if method == "POST":
                    raw = self._read_body()
                    if raw is None:
                        return  # answered (408, 413, 501) or timed out
                    try:
                        body = json.loads(raw or b"{}")
                    except (ValueError, RecursionError) as error:
                        raise ServingError(StatusCode.INVALID_ARGUMENT, f"the body is not JSON: {error}") from None
                    if not isinstance(body, dict):
                        raise ServingError(StatusCode.INVALID_ARGUMENT, "the body must be a JSON object")
                    if match["method"].lower() != "predict":
                        return self._reply(200, rest_classify_or_regress(manager, name, version, match["method"].lower(), body))
                    return self._reply(200, rest_predict(manager, name, version, body))
                raise ServingError(StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {self.path[:200]}")
            except ServingError as error:
                self._reply(error.http_status, {"error": error.message})
            except Exception as error:  # the server stays up; the caller hears what broke
                log.exception("REST request failed")
                self._reply(500, {"error": f"internal error: {error}"})

        def do_GET(self):  # noqa: N802
            self._route("GET")

        def do_POST(self):  # noqa: N802
            self._route("POST")

    return Handler


# ---------------------------------------------------------------- the server


def parse_ssl_config(text: str) -> dict:
    """TensorFlow Serving's --ssl_config_file (SSLConfig, protobuf text format).

    Fields: server_key, server_cert, custom_ca (PEM strings, newlines
    escaped as \\n) and client_verify (true/false).
    """
    config = {"server_key": "", "server_cert": "", "custom_ca": "", "client_verify": False}
    text = re.sub(r"#[^\n]*", "", text)
    for name, quoted, bare in re.findall(r'(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(\w+))', text):
        if name not in config:
            raise ValueError(f"ssl config: unknown field {name!r} (known: {', '.join(sorted(config))})")
        if name == "client_verify":
            if bare not in ("true", "false"):
                raise ValueError(f"ssl config: client_verify must be true or false, got {bare or quoted!r}")
            config[name] = bare == "true"
        else:
            config[name] = quoted.encode("latin-1").decode("unicode_escape")
    if not (config["server_key"] and config["server_cert"]):
        raise ValueError("ssl config: server_key and server_cert are required")
    return config


def _channel_arguments(text: str):
    """TensorFlow Serving's --grpc_channel_arguments: "key=value,key=value"."""
    options = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        options.append((key, int(value) if re.fullmatch(r"-?\d+", value) else value))
    return options


class _TooLarge(Exception):
    pass


class _Deadline:
    __slots__ = ("handler", "at", "expired", "done")

    def __init__(self, handler, at):
        self.handler, self.at, self.expired, self.done = handler, at, False, False


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_threads` at once: past that,
    new connections wait in the listen backlog (TensorFlow Serving's
    --rest_api_num_threads). A client silent for the handler's timeout
    frees its thread (the timeout applies to each read, not to a whole
    request), and while every thread is busy each connection closes after
    its response."""

    request_queue_size = socket.SOMAXCONN

    def __init__(self, address, handler, max_threads: int):
        super().__init__(address, handler)
        self._max_threads = max_threads
        self._slots = threading.BoundedSemaphore(max_threads)
        self._active = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._deadlines = set()  # requests being read, each with the time it must have arrived by
        self._busy = 0  # requests read in full and not yet answered
        self._idle = threading.Condition(self._lock)
        self._connections = set()
        threading.Thread(target=self._reap, name="rest-deadlines", daemon=True).start()

    def saturated(self) -> bool:
        return self._active >= self._max_threads

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def arm(self, handler, seconds: float) -> _Deadline:
        """Starts a request's clock (when its handler waits for the request line)."""
        deadline = _Deadline(handler, time.monotonic() + seconds)
        with self._lock:
            self._deadlines.add(deadline)
        return deadline

    def rearm(self, deadline: _Deadline, seconds: float):
        with self._lock:
            if not deadline.expired and deadline in self._deadlines:
                deadline.at = time.monotonic() + seconds

    def claim(self, deadline: _Deadline) -> bool:
        """The request has arrived (or is being answered): stops its clock and counts
        it in flight. False if the reaper timed it out first. Idempotent."""
        with self._lock:
            if deadline.expired:
                return False
            if not deadline.done:
                self._deadlines.discard(deadline)
                self._busy += 1
                deadline.done = True
            return True

    def finish(self, deadline: _Deadline):
        """The handler is done with the request, answered or not."""
        with self._lock:
            self._deadlines.discard(deadline)
            if deadline.done:
                deadline.done = False
                self._busy -= 1
                self._idle.notify_all()

    def _reap(self):
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            with self._lock:
                late = [d for d in self._deadlines if d.at <= now]
                for deadline in late:
                    deadline.expired = True
                    self._deadlines.discard(deadline)
            for deadline in late:
                # Never a write here (it could block, or interleave with the
                # handler's): shut the reading side, so the handler's read
                # returns and the handler itself answers 408 (or, idle between
                # requests, closes).
                try:
                    deadline.handler.connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def drain(self, grace: float):
        """Stops accepting (new connections are refused), lets the requests already
        read finish for up to `grace` seconds, then closes every connection."""
        self.shutdown()
        self.socket.close()
        end = time.monotonic() + grace
        with self._lock:
            while self._busy and time.monotonic() < end:
                self._idle.wait(max(0.0, end - time.monotonic()))
            connections = list(self._connections)
        for sock in connections:  # idle keep-alive connections, and anything past the grace
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def process_request(self, request, client_address):
        # Wait for a thread, but not past a shutdown (serve_forever's loop
        # must return for `shutdown` to).
        while not self._slots.acquire(timeout=0.5):
            if self._stopping.is_set():
                self.shutdown_request(request)
                return
        with self._lock:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address):
        with self._lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections.discard(request)
            self._release()

    def _release(self):
        with self._lock:
            self._active -= 1
        self._slots.release()

    def shutdown(self):
        self._stopping.set()
        super().shutdown()


class ModelServer:
    """The gRPC server, the REST server and the model manager, started and stopped together."""

    def __init__(
        self,
        model_name: str,
        model_base_path: str,
        port: int = 8500,
        rest_api_port: int = 8501,
        batching: Optional[BatchingParameters] = None,
        poll_seconds: float = 1.0,
        max_threads: int = 64,
        channel_arguments=(),
        max_body_bytes: int = 4 * 1024 * 1024,
        ssl: Optional[dict] = None,
        rest_timeout_seconds: float = 30.0,
        rest_max_threads: int = 4 * (os.cpu_count() or 1),
        max_num_load_retries: int = 5,
        load_retry_interval: float = 60.0,
    ):
        self.manager = ModelManager(
            model_name, model_base_path, poll_seconds, batching, max_num_load_retries, load_retry_interval
        )
        # gRPC turns SO_REUSEPORT on by default, so a second server on a busy
        # port would share it silently; this one fails to bind instead.
        options = [("grpc.so_reuseport", 0), *channel_arguments]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=max_threads), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.manager), self.grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager), self.grpc)
        if ssl:
            credentials = grpc.ssl_server_credentials(
                [(ssl["server_key"].encode(), ssl["server_cert"].encode())],
                root_certificates=ssl["custom_ca"].encode() or None,
                require_client_auth=ssl["client_verify"],
            )
            self.port = self.grpc.add_secure_port(f"0.0.0.0:{port}", credentials)
        else:
            self.port = self.grpc.add_insecure_port(f"0.0.0.0:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on port {port}")
        self.rest = None
        if rest_api_port:
            handler = make_rest_handler(self.manager, max_body_bytes, rest_timeout_seconds)
            self.rest = _BoundedHTTPServer(("0.0.0.0", rest_api_port), handler, rest_max_threads)
            self.rest_api_port = self.rest.server_address[1]

    def start(self):
        self.manager.start()  # the first version loads before the ports open, as in TensorFlow Serving
        self.grpc.start()
        print(f"Running gRPC ModelServer at 0.0.0.0:{self.port} ...", flush=True)
        if self.rest is not None:
            threading.Thread(target=self.rest.serve_forever, name="rest", daemon=True).start()
            print(f"Exporting HTTP/REST API at:localhost:{self.rest_api_port} ...", flush=True)

    def stop(self, grace: float = 30.0):
        """Refuses new requests, lets the accepted ones finish (up to `grace` s), then unloads."""
        done = self.grpc.stop(grace)
        if self.rest is not None:
            self.rest.drain(grace)
        done.wait()
        self.manager.stop()


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _bool_flag(text: str) -> bool:
    """A boolean flag's value as TensorFlow's flag parser reads it: `--flag`,
    `--flag=true` or `--flag=false`, nothing else
    (tensorflow/core/util/command_line_flags.cc, ParseBoolFlag)."""
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return text == "true"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: pick a free one)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port; 0 turns REST off")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", required=True, help="directory of numbered SavedModel versions")
    p.add_argument("--enable_batching", nargs="?", const=True, default=False, type=_bool_flag, metavar="true|false",
                   help="batch concurrent requests together")
    p.add_argument("--batching_parameters_file", help="BatchingParameters in protobuf text format")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="how often to look for new versions (0: only at start)")
    p.add_argument("--grpc_max_threads", type=int, default=64)
    p.add_argument("--max_num_load_retries", type=_at_least(0), default=5,
                   help="retries of a failed version load (0: one attempt)")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                   help="between load retries (default one minute)")
    p.add_argument("--grpc_channel_arguments", default="", help='e.g. "grpc.max_receive_message_length=8388608"')
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0)
    p.add_argument("--ssl_config_file", help="SSLConfig in protobuf text format: serve gRPC over TLS")
    p.add_argument("--drain_seconds", type=float, default=30.0, help="on SIGTERM: how long in-flight requests may take")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000,
                   help="a REST client that stalls this long mid-request is answered 408 or dropped")
    p.add_argument("--rest_api_num_threads", type=int, default=4 * (os.cpu_count() or 1),
                   help="REST connections handled at once; more wait in the listen backlog")
    args = p.parse_args(argv)
    if args.rest_api_timeout_in_ms < 1 or args.rest_api_num_threads < 1:
        p.error("--rest_api_timeout_in_ms and --rest_api_num_threads must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    batching = None
    if args.enable_batching:
        batching = BatchingParameters()
        if args.batching_parameters_file:
            with open(args.batching_parameters_file) as f:
                batching = parse_batching_parameters(f.read())
    elif args.batching_parameters_file:
        p.error("--batching_parameters_file needs --enable_batching")
    if args.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)

    ssl = None
    if args.ssl_config_file:
        with open(args.ssl_config_file) as f:
            ssl = parse_ssl_config(f.read())
    server = ModelServer(
        args.model_name, os.path.abspath(args.model_base_path), args.port, args.rest_api_port, batching,
        args.file_system_poll_wait_seconds, args.grpc_max_threads, _channel_arguments(args.grpc_channel_arguments),
        ssl=ssl, rest_timeout_seconds=args.rest_api_timeout_in_ms / 1000.0,
        rest_max_threads=args.rest_api_num_threads, max_num_load_retries=args.max_num_load_retries,
        load_retry_interval=args.load_retry_interval_micros / 1e6,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except RuntimeError as error:  # as TensorFlow Serving, which exits when its models never load
        log.error("%s", error)
        return 1
    stop.wait()
    log.info("stopping: draining in-flight requests (up to %.0f s)", args.drain_seconds)
    server.stop(args.drain_seconds)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
