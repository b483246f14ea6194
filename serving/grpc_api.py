"""TensorFlow Serving's gRPC API: PredictionService and ModelService over a `serving.core.ServerCore`."""

import functools
import logging
import os
import re
import time
from typing import Optional

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_status_pb2  # noqa: E402
from tensorflow_serving.apis import model_management_pb2  # noqa: E402
from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

from serving.errors import ServingError  # noqa: E402
from serving.errors import StatusCode  # noqa: E402
from serving.servables import DEFAULT_SIGNATURE  # noqa: E402
from serving import request_log  # noqa: E402
from serving.core import models_from_proto  # noqa: E402

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
        raise ServingError(
            StatusCode.INVALID_ARGUMENT, f"input \"{name}\" is not a valid TensorProto: {error}"
        ) from None


def _dtype(name: str, enum: int) -> tf.DType:
    """A TensorProto's dtype enum as a tf.DType (DT_INVALID reads as float32, as an
    unset field does); an enum TensorFlow does not know is INVALID_ARGUMENT."""
    if not enum:
        return tf.float32
    try:
        return tf.dtypes.as_dtype(enum)
    except (TypeError, ValueError):
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"input \"{name}\" has an unknown dtype enum {enum}") from None


def _serve(core, spec):
    """Holds the version a ModelSpec names: by number, by label or the latest
    (server_core.cc, ServableRequestFromModelSpec)."""
    if not spec.name:
        raise ServingError(StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        return core.serve(spec.name, label=spec.version_label)
    return core.serve(spec.name, spec.version.value if choice == "version" else None)


def _version(spec) -> Optional[int]:
    """The version a status request names; a label names none: all versions
    (get_model_status_impl.cc looks at `version` only)."""
    return spec.version.value if spec.WhichOneof("version_choice") == "version" else None


def _grpc_method(method):
    """A gRPC handler that answers every failure with a status: a `ServingError`
    with its own code, anything unexpected with INTERNAL and a message (the
    server logs it and stays up), never grpc's bare UNKNOWN."""

    counted = method.__name__ in ("Predict", "Classify", "Regress")  # as prediction_service_impl.cc counts

    def record(self, request, status, started):
        metrics = getattr(self, "metrics", None)
        if counted and metrics is not None:
            metrics.record_request(request.model_spec.name, method.__name__, "GRPC", status, started)
        log_to = getattr(self, "request_log", None)
        if log_to is not None:
            spec = getattr(request, "model_spec", None)
            log_to.write(spec.name if spec is not None else "", method.__name__, "GRPC", status, started)

    @functools.wraps(method)
    def handler(self, request, context):
        started = time.monotonic()
        if getattr(self, "request_log", None) is not None:
            request_log.begin()  # (without a log nothing is noted: no thread keeps a request's inputs)
        try:
            response = method(self, request, context)
        except ServingError as error:
            message, code = error.message, error.code
        except Exception as error:
            log.exception("gRPC %s failed", method.__name__)
            message, code = f"{type(error).__name__}: {error}"[:500], StatusCode.INTERNAL
        else:
            record(self, request, "OK", started)
            return response
        record(self, request, code.name, started)
        context.abort(code, message)

    return handler


def _answered_by(model_spec, loaded, signature=None):
    """Fills a response's `model_spec` with the version that answered, as TensorFlow Serving does."""
    model_spec.name = loaded.name
    model_spec.version.value = loaded.version
    if signature is not None:
        model_spec.signature_name = signature


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, metrics=None, request_log=None):
        self.manager = manager
        self.metrics = metrics  # a serving.metrics.ServingMetrics, or None
        self.request_log = request_log  # a serving.request_log.RequestLog, or None

    @_grpc_method
    def Predict(self, request, context):
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        # Check types and shapes against the signature before building arrays.
        with _serve(self.manager, request.model_spec) as loaded:
            dims = {k: _dims(k, v) for k, v in request.inputs.items()}
            loaded.check_inputs(signature, {k: _dtype(k, v.dtype) for k, v in request.inputs.items()}, dims)
            inputs = {k: _tensor_to_array(k, v, dims[k]) for k, v in request.inputs.items()}
            outputs = loaded.run(signature, inputs, tuple(request.output_filter), checked=True)
            response = predict_pb2.PredictResponse()
            _answered_by(response.model_spec, loaded, signature)
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
        with _serve(self.manager, request.model_spec) as loaded:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _answered_by(response.model_spec, loaded)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in loaded.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(signature_map)
            return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager, reload=None, request_log=None):
        self.manager = manager
        self.request_log = request_log
        self.reload = reload  # fn(models): applies a new model config; None: reloads are refused

    @_grpc_method
    def HandleReloadConfigRequest(self, request, context):
        """A new `ModelServerConfig` (model_service_impl.cc): applied whole, or not at all."""
        if self.reload is None:
            raise ServingError(StatusCode.UNIMPLEMENTED, "this server does not reload its config")
        if request.config.WhichOneof("config") != "model_config_list":
            raise ServingError(StatusCode.INVALID_ARGUMENT, "ServerModelConfig type not supported by "
                               "HandleReloadConfigRequest. Only ModelConfigList is currently supported")
        try:
            models = models_from_proto(request.config, "config")
        except ValueError as error:
            raise ServingError(StatusCode.INVALID_ARGUMENT, str(error)) from None
        self.reload(models)
        return model_management_pb2.ReloadConfigResponse(status={"error_code": 0})

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


def parse_channel_arguments(text: str):
    """TensorFlow Serving's --grpc_channel_arguments: "key=value,key=value"."""
    options = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        options.append((key, int(value) if re.fullmatch(r"-?\d+", value) else value))
    return options
