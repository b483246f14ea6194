"""TensorFlow Serving warm-up requests, so the first user request is not the slow one."""

import os
from typing import Optional, Sequence

import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def translate_warmup_settings(beam_size=4, alpha=0.6, max_extra_length=50, max_beam_size=8, max_num_return=4):
    """The controls of warm-up's `translate` requests: a beam search (the
    export's beam size, at least 2 where the limits allow) and a sampled
    request with both filters, so each of the signature's two decoding loops
    runs once, all within the export's limits."""
    beam = {"alpha": alpha, "max_extra_length": max_extra_length, "num_return": 1, "temperature": 0.0,
            "top_k": 0, "top_p": 1.0, "seed": 0}
    return [
        {**beam, "beam_size": min(max(beam_size, 2), max_beam_size)},
        {**beam, "beam_size": 1, "num_return": min(2, max_num_return), "temperature": 0.8, "top_k": 20, "top_p": 0.9,
         "seed": 1},
    ]


def warmup_requests(sentences: Sequence[str], model_name: str = "transformer",
                    translate_settings: Optional[Sequence[dict]] = None,
                    signatures: Sequence[str] = ("serving_default", "attention", "translate")):
    """PredictionLog records: each of `signatures` that takes text alone
    (serving_default, attention), called with `sentences` as one batch and
    with each sentence alone; `translate` on the first of those batches, once
    for each of `translate_settings` (default `translate_warmup_settings()`)."""
    from keras_transformer.decoding.per_sentence import CONTROLS

    translate_settings = translate_warmup_settings() if translate_settings is None else translate_settings
    sentences = list(sentences)
    batches = ([sentences] if len(sentences) > 1 else []) + [[s] for s in sentences]  # never an empty batch
    logs = []

    def add(signature, inputs):
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(value)
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))

    for i, batch in enumerate(batches):
        text = tf.make_tensor_proto(batch, dtype=tf.string)
        for signature in ("serving_default", "attention"):
            if signature in signatures:
                add(signature, {"text": text})
        if i == 0 and "translate" in signatures:  # translate once a kind, on the first batch: each of its loops has run
            for settings in translate_settings:
                controls = {name: tf.make_tensor_proto([settings[name]] * len(batch), dtype=dtype)
                            for name, (dtype, _) in CONTROLS.items()}
                add("translate", {"text": text, **controls})
    return logs


def write_warmup_requests(export_dir: str, sentences: Sequence[str],
                          translate_settings: Optional[Sequence[dict]] = None,
                          signatures: Sequence[str] = ("serving_default", "attention", "translate")):
    """Writes `export_dir/assets.extra/tf_serving_warmup_requests` for the
    exported `signatures`; returns its path, or None (and writes nothing)
    when there is nothing to warm up."""
    logs = warmup_requests(sentences, translate_settings=translate_settings, signatures=signatures)
    if not logs:
        return None
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path
