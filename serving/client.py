"""Clients for TensorFlow Serving: gRPC (the tensorflow-serving-api stubs) and REST.

Works unchanged against `tensorflow_model_server` and against `serving.server`.

    python -m serving.client --server localhost:8500 --model_name transformer "A man rides a bike."
    python -m serving.client --server localhost:8500 --model_name transformer --input sentences.txt
    python -m serving.client --rest --server localhost:8501 --model_name transformer "A man rides a bike."
    python -m serving.client --server localhost:8500 --model_name transformer --beam_size 5 --num_return 3 "A man."
    python -m serving.client --server localhost:8500 --model_name transformer --beam_size 1 --temperature 0.8 \
        --top_p 0.9 --seed 7 --num_return 2 "A man rides a bike."

With any decoding control (--beam_size, --alpha, --max_extra_length, --num_return,
--temperature, --top_k, --top_p, --seed) the client calls the export's `translate`
signature, each sentence with those controls; without, `serving_default`.
"""

import argparse
import base64
import functools
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Sequence, Tuple

import grpc
import numpy as np

DEFAULT_SIGNATURE = "serving_default"
TRANSLATE_SIGNATURE = "translate"
# Sentences per request: the max_batch_size of serving/batching.config (`make
# serve`); a server with batching refuses requests of more rows.
DEFAULT_BATCH_SIZE = 32
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


class ServingError(Exception):
    """A non-OK answer from the server: its status code name and message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _chunks(items: Sequence, size: int):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"`batch_size` must be an integer of at least 1. Received: batch_size={size!r}")
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Retrying:
    def __init__(self, retries: int, backoff: float):
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries and backoff must be >= 0, got {retries} and {backoff}")
        self.retries = retries
        self.backoff = backoff

    def _call(self, fn, retryable):
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as error:
                if attempt == self.retries or not retryable(error):
                    raise
                time.sleep(self.backoff * 2 ** attempt)


class GrpcClient(_Retrying):
    """TensorFlow Serving's `PredictionService` and `ModelService` over gRPC.

    Args:
        server: "host:port".
        model_name: the served model's name.
        version: a version number, or None for the latest.
        timeout: seconds per call.
        version_label: a version label the server's model config defines
            ("stable", "canary"), instead of `version`.
        retries: extra attempts when the server answers UNAVAILABLE (starting,
            draining, queue full), waiting `backoff`, 2x`backoff`, ... between them.
        tls: use a TLS channel; `root_certificates` (PEM bytes) overrides the
            system's roots.
        max_message_bytes: the largest request and response this client sends and accepts.
    """

    def __init__(
        self,
        server: str,
        model_name: str,
        version: Optional[int] = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        tls: bool = False,
        root_certificates: Optional[bytes] = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        version_label: Optional[str] = None,
    ):
        super().__init__(retries, backoff)
        if version is not None and version_label is not None:
            raise ValueError("give `version` or `version_label`, not both")
        # Imported here so `import serving.client` stays light for REST-only users.
        from tensorflow_serving.apis import model_service_pb2_grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(server, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(server, options=options)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.model_name = model_name
        self.version = version
        self.version_label = version_label
        self.timeout = timeout

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, spec, signature_name=None):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label is not None:
            spec.version_label = self.version_label
        if signature_name is not None:
            spec.signature_name = signature_name

    def _rpc(self, method, request):
        def call():
            return method(request, timeout=self.timeout)

        def retryable(error):
            return isinstance(error, grpc.RpcError) and error.code() in RETRYABLE

        try:
            return self._call(call, retryable)
        except grpc.RpcError as error:
            raise ServingError(error.code().name, error.details() or "") from None

    def predict(
        self, inputs: Dict[str, object], signature_name: str = DEFAULT_SIGNATURE, output_filter: Sequence[str] = ()
    ) -> Dict[str, np.ndarray]:
        """One Predict call: a dict of array-likes in, a dict of numpy arrays out."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature_name)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        response = self._rpc(self.prediction.Predict, request)
        return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}

    def translate(
        self, sentences: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Tuple[List[str], List[float]]:
        """Translations and their log-probabilities, `batch_size` sentences per request."""
        texts, scores = [], []
        for chunk in _chunks(list(sentences), batch_size):
            out = self.predict({"text": np.array([s.encode("utf-8") for s in chunk], dtype=object)})
            texts += [t.decode("utf-8") for t in out["translation"]]
            scores += [float(s) for s in out["log_prob"]]
        return texts, scores

    def hypotheses(
        self, sentences: Sequence[str], num_return: int = 1, batch_size: int = DEFAULT_BATCH_SIZE, **controls
    ) -> List[List[Tuple[str, float]]]:
        """Each sentence's `num_return` translations with their log-probabilities,
        best first, from the `translate` signature; `controls` (beam_size,
        alpha, max_extra_length, temperature, top_k, top_p, seed) apply to
        every sentence, and those not given take the library's defaults;
        with a temperature above 0, beam_size defaults to 1 and seed to a
        new random one each call."""
        out = []
        for chunk in _chunks(list(sentences), batch_size):
            inputs = {"text": np.array([s.encode("utf-8") for s in chunk], dtype=object),
                      **_control_columns(len(chunk), num_return, controls)}
            result = self.predict(inputs, TRANSLATE_SIGNATURE, ("translations", "log_probs"))
            out += [[(t.decode("utf-8"), float(p)) for t, p in zip(texts[:num_return], scores[:num_return])]
                    for texts, scores in zip(result["translations"], result["log_probs"])]
        return out

    def metadata(self) -> Dict[str, dict]:
        """{signature name: {"inputs": {name: (dtype, shape)}, "outputs": {...}}}."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self._rpc(self.prediction.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {name: _describe(sig) for name, sig in signature_map.signature_def.items()}

    def status(self) -> List[dict]:
        """[{"version", "state", "error"}] for the model's versions."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._rpc(self.models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [
            {"version": s.version, "state": states.Name(s.state), "error": s.status.error_message}
            for s in response.model_version_status
        ]


def _describe(signature) -> dict:
    import tensorflow as tf

    def shape(info):
        return (
            None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
        )

    return {
        "inputs": {k: (tf.dtypes.as_dtype(v.dtype).name, shape(v)) for k, v in signature.inputs.items()},
        "outputs": {k: (tf.dtypes.as_dtype(v.dtype).name, shape(v)) for k, v in signature.outputs.items()},
    }


class RestClient(_Retrying):
    """TensorFlow Serving's REST API (`POST /v1/models/<name>:predict`, `GET /v1/models/<name>`).

    Args: as `GrpcClient`; `server` is "host:port" of the REST port, or a full
        "http(s)://host:port" URL.
    """

    def __init__(self, server: str, model_name: str, version: Optional[int] = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5, version_label: Optional[str] = None):
        super().__init__(retries, backoff)
        if version is not None and version_label is not None:
            raise ValueError("give `version` or `version_label`, not both")
        base = server if "://" in server else f"http://{server}"
        quote = functools.partial(urllib.parse.quote, safe="")
        self.url = f"{base}/v1/models/{quote(model_name)}"
        if version is not None:
            self.url += f"/versions/{version}"
        elif version_label is not None:
            self.url += f"/labels/{quote(version_label)}"
        self.timeout = timeout

    def _request(self, url: str, body: Optional[dict] = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")

        def call():
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())

        def retryable(error):
            return isinstance(error, urllib.error.HTTPError) and error.code == 503 or (
                isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError)
            )

        try:
            return self._call(call, retryable)
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except ValueError:
                message = error.reason
            raise ServingError(f"HTTP {error.code}", message) from None
        except urllib.error.URLError as error:
            raise ServingError("UNAVAILABLE", str(error.reason)) from None

    def predict(self, instances: list, signature_name: str = DEFAULT_SIGNATURE) -> list:
        """Row format: a list of instances in, the list of predictions out."""
        body = {"signature_name": signature_name, "instances": instances}
        return self._request(self.url + ":predict", body)["predictions"]

    def translate(
        self, sentences: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Tuple[List[str], List[float]]:
        texts, scores = [], []
        for chunk in _chunks(list(sentences), batch_size):
            for prediction in self.predict(list(chunk)):
                texts.append(_text(prediction["translation"]))
                scores.append(float(prediction["log_prob"]))
        return texts, scores

    def hypotheses(
        self, sentences: Sequence[str], num_return: int = 1, batch_size: int = DEFAULT_BATCH_SIZE, **controls
    ) -> List[List[Tuple[str, float]]]:
        """As `GrpcClient.hypotheses`, in the row format: one instance per
        sentence holding its text and its controls."""
        out = []
        for chunk in _chunks(list(sentences), batch_size):
            columns = _control_columns(len(chunk), num_return, controls)
            instances = [{"text": s, **{k: v[i].item() for k, v in columns.items()}} for i, s in enumerate(chunk)]
            for prediction in self.predict(instances, TRANSLATE_SIGNATURE):
                pairs = zip(prediction["translations"][:num_return], prediction["log_probs"][:num_return])
                out.append([(_text(t), float(p)) for t, p in pairs])
        return out

    def metadata(self) -> dict:
        return self._request(self.url + "/metadata")["metadata"]["signature_def"]

    def status(self) -> List[dict]:
        rows = self._request(self.url)["model_version_status"]
        return [{"version": int(r["version"]), "state": r["state"], "error": r["status"].get("error_message", "")}
                for r in rows]


def _control_columns(rows: int, num_return: int, controls: dict) -> Dict[str, np.ndarray]:
    """The `translate` signature's controls, one value per sentence, as arrays of their dtypes."""
    from keras_transformer.decoding.per_sentence import CONTROLS

    unknown = sorted(set(controls) - set(CONTROLS) - {"num_return"})
    if unknown:
        raise ValueError(f"unknown decoding control(s) {unknown}; the controls are {sorted(CONTROLS)}")
    values = {**{name: default for name, (_, default) in CONTROLS.items()}, **controls, "num_return": num_return}
    if values["temperature"] > 0:
        # Sampling: one hypothesis a sample unless a beam size is given (a beam would be refused),
        # and a fresh seed unless one is given, so two calls draw different samples.
        values["beam_size"] = controls.get("beam_size", 1)
        if controls.get("seed") is None:
            values["seed"] = int(np.random.randint(2**62))
    return {name: np.full([rows], values[name], dtype.as_numpy_dtype) for name, (dtype, _) in CONTROLS.items()}


def _text(value) -> str:
    return base64.b64decode(value["b64"]).decode("utf-8", "replace") if isinstance(value, dict) else value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sentences", nargs="*", help="sentences to translate")
    p.add_argument("--server", default="localhost:8500", help="host:port (the gRPC port, or the REST port with --rest)")
    p.add_argument("--model_name", default="transformer")
    p.add_argument("--model_version", type=int, help="default: the latest")
    p.add_argument("--model_version_label", help="a version label of the server's model config")
    p.add_argument("--input", help="a file of sentences, one per line ('-': stdin); translations go to stdout in order")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="sentences per request (at most the server's max_batch_size)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE")
    p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    p.add_argument("--tls", action="store_true", help="gRPC over TLS")
    p.add_argument("--root_cert", help="PEM file of root certificates for --tls")
    p.add_argument("--scores", action="store_true", help="print each translation's log-probability before it")
    p.add_argument("--status", action="store_true", help="print the model's version status and exit")
    p.add_argument("--metadata", action="store_true", help="print the model's signatures and exit")
    decoding = p.add_argument_group("decoding controls (the translate signature; defaults: the library's)")
    decoding.add_argument("--beam_size", type=int,
                          help="2 or more: beam search; 0 or 1: greedy or sampled (4; 1 with --temperature)")
    decoding.add_argument("--alpha", type=float, help="the length-penalty exponent (0.6)")
    decoding.add_argument("--max_extra_length", type=int, help="at most source length + this many tokens (50)")
    decoding.add_argument("--num_return", type=int, help="hypotheses per sentence, best first (1)")
    decoding.add_argument("--temperature", type=float, help="above 0, with --beam_size 0 or 1: sample (0)")
    decoding.add_argument("--top_k", type=int, help="sample from the k most likely tokens (0: all)")
    decoding.add_argument("--top_p", type=float, help="sample from the most likely tokens of this mass (1: all)")
    decoding.add_argument("--seed", type=int,
                          help="the sampling seed: the same seed, the same samples (default: a new one each run)")
    args = p.parse_args(argv)
    names = ("beam_size", "alpha", "max_extra_length", "temperature", "top_k", "top_p", "seed")
    controls = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    per_sentence = bool(controls) or args.num_return is not None
    if args.model_version is not None and args.model_version_label is not None:
        p.error("give --model_version or --model_version_label, not both")
    if args.batch_size < 1:
        p.error(f"--batch_size must be at least 1, got {args.batch_size}")

    if args.rest:
        client = RestClient(args.server, args.model_name, args.model_version, args.timeout, args.retries,
                            version_label=args.model_version_label)
    else:
        roots = open(args.root_cert, "rb").read() if args.root_cert else None
        client = GrpcClient(args.server, args.model_name, args.model_version, args.timeout, args.retries,
                            tls=args.tls, root_certificates=roots, version_label=args.model_version_label)
    try:
        if args.status:
            print(json.dumps(client.status(), indent=2))
            return 0
        if args.metadata:
            print(json.dumps(client.metadata(), indent=2))
            return 0
        sentences = list(args.sentences)
        if args.input:
            stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
            with stream:
                sentences += [line.rstrip("\n") for line in stream]
        if not sentences:
            p.error("give sentences as arguments or --input FILE")
        if per_sentence:
            num_return = 1 if args.num_return is None else args.num_return
            hypotheses = client.hypotheses(sentences, num_return, args.batch_size, **controls)
        else:
            texts, scores = client.translate(sentences, args.batch_size)
    except ServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not per_sentence:
        hypotheses = [[pair] for pair in zip(texts, scores)]
    for i, sentence in enumerate(hypotheses):
        for text, score in sentence:
            line = f"{score:.4f}\t{text}" if args.scores else text
            # Several hypotheses a sentence: each line starts with the sentence's index.
            print(f"{i}\t{line}" if len(sentence) > 1 else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
