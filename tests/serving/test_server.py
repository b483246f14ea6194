"""The model server over real gRPC and HTTP on loopback, started as a subprocess."""

import json
import os
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.client import GrpcClient
from serving.client import RestClient
from serving.client import ServingError
from tests.serving.conftest import SENTENCES


def test_every_signature_metadata_and_status(server, in_process):
    with GrpcClient(server.address, "toy") as client:
        texts, scores = client.translate(SENTENCES, batch_size=3)
        expected_texts, expected_scores = in_process(1, SENTENCES)
        assert texts == expected_texts
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)

        ids = client.predict({"ids": np.array([[2, 5, 6, 3]], np.int32)}, "translate_ids")
        assert ids["ids"].dtype == np.int32 and ids["ids"].shape[0] == 1 and ids["log_prob"].shape == (1,)
        # The beams' own scores, re-scored. A random model may start its
        # output with a word-continuation piece ("##t..."), which detokenizes
        # to text that tokenizes back to other pieces: only outputs without
        # one are the same token sequence when read back.
        readable = [i for i, text in enumerate(expected_texts) if "##" not in text]
        assert len(readable) >= 2, expected_texts
        score = client.predict(
            {
                "text": np.array([SENTENCES[i].encode() for i in readable], object),
                "target_text": np.array([expected_texts[i].encode() for i in readable], object),
            },
            "score",
        )["log_prob"]
        np.testing.assert_allclose(score, expected_scores[readable], atol=1e-3)
        attention = client.predict({"text": np.array([b"A man rides a bike."], object)}, "attention")
        assert attention["attention"].ndim == 3
        assert set(attention) == {"translation", "source_tokens", "target_tokens", "attention"}
        filtered = client.predict({"text": np.array([b"A bike."], object)}, output_filter=["log_prob"])
        assert set(filtered) == {"log_prob"}

        metadata = client.metadata()
        assert set(metadata) == {"serving_default", "translate_ids", "score", "attention"}
        assert metadata["serving_default"]["inputs"] == {"text": ("string", [None])}
        assert metadata["score"]["outputs"]["log_prob"] == ("float32", [None])
        assert client.status() == [{"version": 1, "state": "AVAILABLE", "error": ""}]


def test_rest_api(server, in_process):
    client = RestClient(f"localhost:{server.rest_port}", "toy")
    texts, scores = client.translate(SENTENCES[:4])
    assert texts == in_process(1, SENTENCES[:4])[0]
    assert client.status() == [{"version": 1, "state": "AVAILABLE", "error": ""}]
    assert set(client.metadata()["signatureDef"]) == {"serving_default", "translate_ids", "score", "attention"}
    columnar = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://localhost:{server.rest_port}/v1/models/toy/versions/1:predict",
        data=json.dumps({"inputs": {"text": SENTENCES[:2]}}).encode(),
    )).read())
    assert columnar["outputs"]["translation"] == texts[:2]
    with pytest.raises(ServingError, match="HTTP 400.*missing input"):
        client.predict([{"text": "a man"}], "score")
    with pytest.raises(ServingError, match="HTTP 404"):
        RestClient(f"localhost:{server.rest_port}", "nope").translate(["a"])


def _code(call):
    with pytest.raises(ServingError) as caught:
        call()
    return caught.value.code, caught.value.message


def test_bad_requests_get_a_status_and_the_server_stays_up(server):
    client = GrpcClient(server.address, "toy", retries=0)
    text = np.array([b"a man"], object)
    assert _code(lambda: GrpcClient(server.address, "other", retries=0).translate(["a"]))[0] == "NOT_FOUND"
    assert _code(lambda: GrpcClient(server.address, "toy", version=7, retries=0).translate(["a"]))[0] == "NOT_FOUND"
    code, message = _code(lambda: client.predict({"text": text}, "no_such_signature"))
    assert code == "NOT_FOUND" and "serving_default" in message
    code, message = _code(lambda: client.predict({"text": text}, "score"))
    assert code == "INVALID_ARGUMENT" and "missing input(s) ['target_text']" in message
    code, message = _code(lambda: client.predict({"text": text, "extra": text}))
    assert code == "INVALID_ARGUMENT" and "unexpected input(s) ['extra']" in message
    code, message = _code(lambda: client.predict({"text": np.array([1, 2], np.int32)}))
    assert code == "INVALID_ARGUMENT" and "must be string, got int32" in message
    code, message = _code(lambda: client.predict({"text": np.array([[b"a"], [b"b"]], object)}))
    assert code == "INVALID_ARGUMENT" and "must have shape [None]" in message
    code, message = _code(lambda: client.predict({"text": np.array([], object)}))
    assert code == "INVALID_ARGUMENT" and "empty batch" in message
    code, message = _code(lambda: client.translate(["bike " * 60]))
    assert code == "INVALID_ARGUMENT" and "more tokens than this model takes" in message
    code, message = _code(lambda: client.predict({"text": np.array([b"a \xff\xfe man"], object)}))
    assert code == "INVALID_ARGUMENT" and "not valid UTF-8" in message
    code, message = _code(lambda: client.predict({"text": np.array([b"x" * (5 << 20)], object)}))
    assert code == "RESOURCE_EXHAUSTED"
    # Still serving, the same answers as before.
    assert client.translate(["A man rides a bike."])[0] == GrpcClient(server.address, "toy").translate(["A man rides a bike."])[0]
    assert server.process.poll() is None


def _load(address, requests_per_client, clients, start_gate, results):
    def one(index):
        channel = grpc.insecure_channel(address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        start_gate.wait()
        for n in range(requests_per_client):
            batch = [SENTENCES[(index + n) % len(SENTENCES)], SENTENCES[(index * 3 + n) % len(SENTENCES)]]
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "toy"
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(batch))
            try:
                response = stub.Predict(request, timeout=60)
                out = [t.decode() for t in tf.make_ndarray(response.outputs["translation"])]
                results.append((response.model_spec.version.value, batch, out, time.monotonic()))
            except grpc.RpcError as error:
                results.append(("error", batch, f"{error.code().name}: {error.details()}", time.monotonic()))
        channel.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def test_concurrent_load_with_a_new_version_dropped_in(server, serving_exports, in_process):
    _, staging, _ = serving_exports
    expected = {v: dict(zip(SENTENCES, in_process(v, SENTENCES)[0])) for v in (1, 2)}
    results, gate = [], threading.Event()
    threads = _load(server.address, 50, 16, gate, results)
    gate.set()
    while len(results) < 200:
        time.sleep(0.05)
    os.rename(os.path.join(staging, "2"), os.path.join(server.base, "2"))  # atomic, as export_saved_model does
    for thread in threads:
        thread.join()
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors[:3]
    assert len(results) == 800
    for version, batch, out, _ in results:
        assert out == [expected[version][s] for s in batch]
    assert results[0][0] == 1
    # Version 2 loads (and warms up) while the load runs; it then serves everything.
    deadline = time.monotonic() + 120
    client = GrpcClient(server.address, "toy")
    swapped = [{"version": 2, "state": "AVAILABLE", "error": ""}, {"version": 1, "state": "END", "error": ""}]
    while client.status() != swapped and time.monotonic() < deadline:  # version 1 unloads in the background
        time.sleep(0.2)
    assert client.status() == swapped
    assert client.translate(SENTENCES)[0] == [expected[2][s] for s in SENTENCES]


def _raw_http(port, request: bytes, timeout=30) -> bytes:
    """Sends raw bytes to the REST port; returns what comes back until the
    server closes the connection or has sent a whole response."""
    import socket

    with socket.create_connection(("localhost", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_rest_content_length_cannot_be_abused(server):
    # Before the SIGTERM test below, which stops this module's server.
    # Each is a client's mistake: a 4xx, the server stays up, and an
    # oversized body is refused from its header, before it is read.
    path = b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    cases = {
        b"Content-Length: -5\r\n\r\n" + b'{"instances": ["a"]}': b" 400 ",
        b"Content-Length: ten\r\n\r\n{}": b" 400 ",
        # 1 GB announced, a few bytes sent: answered at once (413), not after
        # reading (or waiting for) a gigabyte.
        b"Content-Length: 1000000000\r\n\r\n{}": b" 413 ",
        b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n{}": b" 400 ",  # past int()'s digit limit
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n": b" 501 ",
    }
    for headers, status in cases.items():
        reply = _raw_http(server.rest_port, path + headers)
        assert status in reply.split(b"\r\n", 1)[0] + b" ", reply[:300]
    client = RestClient(f"localhost:{server.rest_port}", "toy")
    assert len(client.translate(["A man."])[0]) == 1  # still serving


def test_an_error_reply_closes_the_connection_so_an_unread_body_is_not_a_request(server):
    # A 404 sent before its body is read: on a kept-alive connection the body
    # would be read as the next request (request smuggling behind a proxy).
    import socket

    smuggled = b"GET /v1/models/toy HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (b"POST /v1/models/nope:nothing HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)) + smuggled
    with socket.create_connection(("localhost", server.rest_port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 404") and received.count(b"HTTP/1.1 ") == 1, received[:300]


def test_the_server_refuses_rest_flags_below_one(serving_exports):
    import subprocess
    import sys

    from tests.serving.conftest import ROOT

    base, _, _ = serving_exports
    for flag in ("--rest_api_num_threads=0", "--rest_api_timeout_in_ms=0"):
        result = subprocess.run(
            [sys.executable, "-m", "serving.server", f"--model_base_path={base}", "--port=0", flag],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2 and "at least 1" in result.stderr, result.stderr[-500:]


def test_stalled_rest_clients_time_out_and_cannot_hold_every_thread(serving_exports):
    # Slowloris: two clients announce a body and stall, on a server with two
    # REST threads and a 1 s timeout. Each is answered 408 when its time is
    # up (TensorFlow Serving's --rest_api_timeout_in_ms), and a good request
    # sent meanwhile waits for a free thread, then is served.
    import socket

    from tests.serving.conftest import ServerProcess

    base, _, _ = serving_exports
    process = ServerProcess(base, "--rest_api_timeout_in_ms=1000", "--rest_api_num_threads=2")
    try:
        stalled = []
        for _ in range(2):
            sock = socket.create_connection(("localhost", process.rest_port), timeout=30)
            sock.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            stalled.append(sock)
        client = RestClient(f"localhost:{process.rest_port}", "toy")
        assert len(client.translate(["A man."])[0]) == 1
        for sock in stalled:
            reply = sock.recv(65536)
            assert reply.split(b"\r\n", 1)[0].endswith(b"408 Request Timeout"), reply[:200]
            sock.close()
    finally:
        process.stop()


def test_sigterm_finishes_accepted_requests_then_exits(server):
    channel = grpc.insecure_channel(server.address)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(SENTENCES * 8))
    stub.Predict(request, timeout=60)  # connected and warm
    pending = [stub.Predict.future(request, timeout=60) for _ in range(24)]
    time.sleep(0.3)  # on the wire and accepted
    server.process.send_signal(15)
    answers = [future.result() for future in pending]  # raises if any accepted request was dropped
    assert all(len(a.outputs["translation"].string_val) == len(SENTENCES) * 8 for a in answers)
    assert server.process.wait(60) == 0
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()

