"""Seeded fuzzing of a live server: mutated gRPC requests, JSON bodies and raw HTTP.

A client's mistake must get a client-error status (never UNKNOWN, INTERNAL or
HTTP 500), and the server must stay up with its memory bounded. The seed is
fixed, so a failure here reproduces; set FUZZ_SEED to explore other inputs.
"""

import json
import os
import re
import socket

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.serving.conftest import SENTENCES
from tests.serving.conftest import ServerProcess

SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
# RESOURCE_EXHAUSTED is gRPC's answer to a message over the size limit, a client's mistake.
CLIENT_CODES = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
}
WORDS = [b"a", b"man", b"rides", b"[END]", b"[PAD]", b"\xff\xfe", b"x" * 3000, b"\xc3", "fährt".encode(), b"", b" "]


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def fuzzed_server(serving_exports, tmp_path_factory):
    base, _, _ = serving_exports
    config = tmp_path_factory.mktemp("fuzz") / "batching.config"
    config.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 2000 }\nnum_batch_threads { value: 2 }\n"
    )
    process = ServerProcess(base, "--enable_batching", f"--batching_parameters_file={config}",
                            "--rest_api_timeout_in_ms=2000")
    yield process
    process.stop()


def _text(rng):
    return b" ".join(rng.choice(WORDS) for _ in range(rng.integers(0, 6)))


def _grpc_request(rng):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = str(rng.choice(["toy"] * 6 + ["", "other", "t" * 300]))
    roll = rng.random()
    if roll < 0.15:
        request.model_spec.version.value = int(rng.choice([1, 2, 0, -1, 2**62]))
    elif roll < 0.2:
        request.model_spec.version_label = str(rng.choice(["stable", ""]))
    request.model_spec.signature_name = str(rng.choice(
        ["", "serving_default", "serving_default", "score", "attention", "translate_ids", "nope", "\x00"]
    ))
    for _ in range(rng.integers(0, 4)):
        tensor = request.inputs[str(rng.choice(["text", "text", "target_text", "ids", "x", ""]))]
        tensor.dtype = int(rng.choice([0, 1, 3, 3, 7, 7, 9, 10, 23, 101, 999]))
        rank = int(rng.integers(0, 4))
        for _ in range(rank):
            tensor.tensor_shape.dim.add(size=int(rng.choice([-1, 0, 1, 2, 3, 5, 1 << 30])))
        kind = rng.integers(0, 4)
        count = int(rng.integers(0, 7))
        if kind == 0:
            tensor.string_val.extend(_text(rng) for _ in range(count))
        elif kind == 1:
            tensor.int_val.extend(int(v) for v in rng.integers(-5, 70000, count))
        elif kind == 2:
            tensor.tensor_content = rng.bytes(int(rng.integers(0, 64)))
        else:
            tensor.float_val.extend(float(v) for v in rng.normal(size=count))
    if rng.random() < 0.15:
        request.output_filter.append(str(rng.choice(["translation", "log_prob", "nope"])))
    return request


def _json_value(rng, depth=0):
    roll = rng.integers(0, 9 if depth < 3 else 6)
    if roll == 0:
        return None
    if roll == 1:
        return bool(rng.integers(0, 2))
    if roll == 2:
        return int(rng.choice([0, -1, 7, 10**30]))
    if roll == 3:
        return float(rng.normal())
    if roll in (4, 5):
        return str(rng.choice(["A man.", "", "\ud800", "[END] a", "x" * 5000, "fährt"]))
    if roll == 6:
        return (
            {"b64": str(rng.choice(["YQ==", "!!", ""]))}
            if rng.random() < 0.5
            else {"text": _json_value(rng, depth + 1)}
        )
    return [_json_value(rng, depth + 1) for _ in range(rng.integers(0, 4))]


def _json_body(rng):
    body = {}
    for key in ("instances", "inputs", "signature_name", "examples", "x"):
        if rng.random() < 0.45:
            body[key] = _json_value(rng)
    if rng.random() < 0.3:
        body["instances"] = [str(rng.choice(SENTENCES)) for _ in range(rng.integers(1, 4))]
    data = json.dumps(body).encode()
    if rng.random() < 0.1:
        data = data[: rng.integers(0, len(data) + 1)]  # truncated JSON
    return data


def _raw_http(rng, body):
    method = rng.choice([b"GET", b"POST", b"POST", b"PUT", b"DELETE", b"HEAD", b"G\x00T", b"X" * 300])
    path = rng.choice([
        b"/v1/models/toy:predict", b"/v1/models/toy", b"/v1/models/toy/metadata", b"/v1/models/toy:classify",
        b"/v1/models/%ff:predict", b"/v1/models/toy/versions/99999999999999999999:predict", b"/" + b"a" * 70000,
        b"*", b"/v1/models/toy/labels/%00:predict", b"/v1/models/" + b"9" * 5000,
    ])
    headers = [b"Host: x"]
    if rng.random() < 0.6:
        headers.append(b"Content-Length: " + rng.choice([str(len(body)).encode(), b"-1", b"abc", b"99999999", b"0"]))
    if rng.random() < 0.2:
        headers.append(b"Transfer-Encoding: " + rng.choice([b"chunked", b"gzip", b"chunked, chunked"]))
    if rng.random() < 0.1:
        headers.append(b"X-Long: " + b"y" * 70000)
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"FOO", b""])  # "": an HTTP/0.9 request line
    return method + b" " + path + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def _http_status(port, data, timeout=15):
    """The status code of the reply to raw `data`, or None if the server closed without one."""
    with socket.create_connection(("localhost", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # nothing more is coming
        except OSError:
            pass
        reply = b""
        try:
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if not reply:
        return None
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", reply)
    return int(match[1]) if match else f"no status line: {reply[:80]!r}"


def test_fuzzed_requests_get_client_errors_and_the_server_stays_up(fuzzed_server):
    rng = np.random.default_rng(SEED)
    pid = fuzzed_server.process.pid
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(fuzzed_server.address))
    rss_start = _rss_mb(pid)
    failures = []
    for i in range(150):
        request = _grpc_request(rng)
        try:
            stub.Predict(request, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            if code not in CLIENT_CODES:
                failures.append(("grpc", i, code.name, error.details(), str(request)[:300]))
    for i in range(150):
        body = _json_body(rng)
        status = _http_status(fuzzed_server.rest_port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        if not isinstance(status, int) or status >= 500:
            failures.append(("json", i, status, body[:300]))
    for i in range(100):
        data = _raw_http(rng, _json_body(rng))
        status = _http_status(fuzzed_server.rest_port, data)
        # 501 (a method or transfer coding this server does not implement) and 505 (an HTTP
        # version it does not speak) are the right answers to such requests, not failures.
        if not isinstance(status, int) or (status >= 500 and status not in (501, 505)):
            failures.append(("http", i, status, data[:200]))
    assert not failures, failures[:5]
    assert fuzzed_server.process.poll() is None
    rss_end = _rss_mb(pid)
    assert rss_end - rss_start < 400, (rss_start, rss_end)
    # Still answering correctly.
    good = predict_pb2.PredictRequest()
    good.model_spec.name = "toy"
    good.inputs["text"].string_val.append(b"A man.")
    good.inputs["text"].dtype = 7
    good.inputs["text"].tensor_shape.dim.add(size=1)
    assert stub.Predict(good, timeout=60).outputs["translation"].string_val
