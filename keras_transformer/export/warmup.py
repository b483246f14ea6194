"""TensorFlow Serving warm-up requests, so the first user request is not the slow one."""

import os
from typing import Sequence

import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def warmup_requests(sentences: Sequence[str], model_name: str = "transformer"):
    """PredictionLog records: each signature that takes text, called with
    `sentences` as one batch and with each sentence alone."""
    sentences = list(sentences)
    batches = ([sentences] if len(sentences) > 1 else []) + [[s] for s in sentences]  # never an empty batch
    logs = []
    for batch in batches:
        for signature in ("serving_default", "attention"):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(export_dir: str, sentences: Sequence[str]):
    """Writes `export_dir/assets.extra/tf_serving_warmup_requests`; returns its
    path, or None (and writes nothing) for no sentences."""
    if not list(sentences):
        return None
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(sentences):
            writer.write(log.SerializeToString())
    return path
