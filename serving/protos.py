"""TensorFlow Serving's config messages that the tensorflow-serving-api
package does not ship, built from their field lists, so that config files are
read by protobuf's own text-format parser, as `tensorflow_model_server` reads
them (model_servers/server.cc, ParseProtoTextFile).

- `SSLConfig`: tensorflow_serving/config/ssl_config.proto (--ssl_config_file).
- `BatchingParameters`: tensorflow_serving/servables/tensorflow/
  session_bundle_config.proto (--batching_parameters_file).

The messages live in a pool of their own, so they never clash with the same
names registered by another package.
"""

import difflib
import re

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto
_MESSAGES = {
    # name: [(field, number, type or wrapper message, repeated)]
    "SSLConfig": [
        ("server_key", 1, _F.TYPE_STRING, False),
        ("server_cert", 2, _F.TYPE_STRING, False),
        ("custom_ca", 3, _F.TYPE_STRING, False),
        ("client_verify", 4, _F.TYPE_BOOL, False),
    ],
    "BatchingParameters": [
        ("max_batch_size", 1, ".google.protobuf.Int64Value", False),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value", False),
        ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, True),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, False),
        ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue", False),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value", False),
    ],
    # config/monitoring_config.proto
    "PrometheusConfig": [
        ("enable", 1, _F.TYPE_BOOL, False),
        ("path", 2, _F.TYPE_STRING, False),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig", False),
    ],
}


def _build():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="keras_transformer/serving_configs.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[wrappers_pb2.DESCRIPTOR.name],
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, repeated in fields:
            label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if isinstance(kind, str):
                message.field.add(name=field, number=number, label=label, type=_F.TYPE_MESSAGE, type_name=kind)
            else:
                message.field.add(name=field, number=number, label=label, type=kind)
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in _MESSAGES}


MESSAGES = _build()


def parse_text(message_name: str, text: str, what: str, secret: bool = False):
    """`text` (protobuf text format) as a `message_name` message.

    Args:
        secret: the text holds secrets (a private key): the error gives the
            line, the column and protobuf's reason only where the reason
            quotes none of the text (`_safe_reason`).

    Raises:
        ValueError: `what` and protobuf's own message (line, column and the
            field or token it could not read), for text that does not parse
            or names a field the message does not have.
    """
    try:
        return text_format.Parse(text, MESSAGES[message_name]())
    except text_format.ParseError as error:
        if not secret:
            raise ValueError(f"{what}: {error}") from None
        raise ValueError(
            f"{what}: line {error.GetLine()}, column {error.GetColumn()}: {_safe_reason(str(error), message_name)}"
        ) from None


def _safe_reason(message: str, message_name: str) -> str:
    """Protobuf's reason, kept only where it has one of the forms below and
    what it quotes is a field name or a single punctuation mark: it can quote
    the text in any form (the line, a token, a field name, a string in either
    quotes), and in an SSL config that text is a private key."""
    fields = [f.name for f in MESSAGES[message_name].DESCRIPTOR.fields]
    punctuation = r"[:{}\[\]<>,;]"
    for pattern, safe in (
        (r'Expected (":"|"true" or "false"|string)\.?$', lambda m: True),
        (r'should not have multiple "(\w+)" fields\.$', lambda m: m[1] in fields),
        (rf"Expected identifier or number, got {punctuation}\.$", lambda m: True),
        (rf"Expected string but found: '{punctuation}'$", lambda m: True),
    ):
        match = re.search(pattern, message)
        if match and safe(match):
            return match[0]
    if re.search(r"Expected string but found: '.*'$", message):
        return "Expected string (a value in quotes)"
    if re.search(r"String missing ending quote: .*$", message):
        return "a string is missing its ending quote"
    match = re.search(r'has no field named "(\w+)"\.$', message)
    if match:
        near = difflib.get_close_matches(match[1], fields, n=1, cutoff=0.8)
        return f'no field named "{match[1]}"' if near else f"an unknown field (the fields are {', '.join(fields)})"
    return "text that is not protobuf text format (protobuf's reason is withheld: it quotes the text)"
