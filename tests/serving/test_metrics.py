"""Prometheus metrics (--monitoring_config_file) under TensorFlow Serving's names.

What to count and how to name it is read from TensorFlow Serving's source:
servables/tensorflow/util.cc (`/tensorflow/serving/request_count` by model
and status, `request_latency` by model, API and entrypoint, 33 exponential
buckets from 10 us), model_servers/prediction_service_impl.cc and
http_server.cc (where each is recorded: latency only for requests that
succeeded), and util/prometheus_exporter.cc (the path, and '/' written ':').
"""

import os
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.client import GrpcClient
from serving.client import RestClient
from serving.client import ServingError
from serving.metrics import LATENCY_BUCKETS_MICROS
from serving.server import main as server_main
from tests.serving.conftest import ServerProcess


def _scrape(port, path="/monitoring/prometheus/metrics"):
    with urllib.request.urlopen(f"http://localhost:{port}{path}", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    return families


def _counts(families):
    family = families.get(":tensorflow:serving:request_count")
    return {} if family is None else {(s.labels["model_name"], s.labels["status"]): s.value for s in family.samples}


def _histogram(families, name, **labels):
    """{"count", "sum", "buckets": [(le, cumulative count)]} of one label set."""
    out = {"buckets": []}
    for sample in families[name].samples:
        rest = {k: v for k, v in sample.labels.items() if k != "le"}
        if rest != labels:
            continue
        if sample.name.endswith("_bucket"):
            out["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            out["count"] = sample.value
        elif sample.name.endswith("_sum"):
            out["sum"] = sample.value
    return out


@pytest.fixture(scope="module")
def monitored(lean_exports, tmp_path_factory):
    base, _, _ = lean_exports
    config = tmp_path_factory.mktemp("monitoring") / "monitoring.config"
    config.write_text("prometheus_config {\n  enable: true\n}\n")
    process = ServerProcess(base, f"--monitoring_config_file={config}")
    yield process
    process.stop()


def test_requests_are_counted_by_model_and_status_and_timed_when_they_succeed(monitored):
    before = _scrape(monitored.rest_port)
    assert _counts(before) == {}
    grpc_client = GrpcClient(monitored.address, "toy", retries=0)
    rest = RestClient(f"localhost:{monitored.rest_port}", "toy")
    for _ in range(3):
        grpc_client.translate(["a man rides a bike ."])
    with pytest.raises(Exception):
        grpc_client.predict({"text": np.array([b"a"], object)}, "no_such_signature")
    for _ in range(2):
        rest.predict([{"text": "two dogs run"}])
    with pytest.raises(ServingError, match="HTTP 404"):
        RestClient(f"localhost:{monitored.rest_port}", "nope").predict([{"text": "a"}])
    with urllib.request.urlopen(f"http://localhost:{monitored.rest_port}/v1/models/toy", timeout=30) as reply:
        assert reply.status == 200
    # Refused after the path matched: counted under the name, as TensorFlow Serving's ParseModelInfo has it.
    assert _http_status(monitored.rest_port, "/v1/models/toy/versions/99999999999999999999") == 400
    # A path that does not match TensorFlow Serving's route in full: its RE2::FullMatch
    # fills no name, so it is counted under "".
    assert _http_status(monitored.rest_port, "/v1/models/toy/extra") == 400
    # Not a /v1/ path: TensorFlow Serving's REST handler never sees it, and counts nothing.
    assert _http_status(monitored.rest_port, "/favicon.ico") == 400

    after = _scrape(monitored.rest_port)
    # A model this server does not serve is counted under "": made-up names add no label values.
    assert _counts(after) == {("toy", "OK"): 6, ("toy", "FAILED_PRECONDITION"): 1, ("", "NOT_FOUND"): 1,
                              ("toy", "INVALID_ARGUMENT"): 1, ("", "INVALID_ARGUMENT"): 1}
    latency = ":tensorflow:serving:request_latency"
    grpc_predict = _histogram(after, latency, model_name="toy", API="Predict", entrypoint="GRPC")
    rest_predict = _histogram(after, latency, model_name="toy", API="predict", entrypoint="REST")
    rest_status = _histogram(after, latency, model_name="toy", API="", entrypoint="REST")
    assert (grpc_predict["count"], rest_predict["count"], rest_status["count"]) == (3, 2, 1)  # failures untimed
    assert _histogram(after, latency, model_name="", API="predict", entrypoint="REST")["buckets"] == []
    # TensorFlow Serving's buckets, Exponential(10, 1.8, 33) in microseconds, as it writes them,
    # cumulative, ending with +Inf at the count.
    bounds = [le for le, _ in grpc_predict["buckets"]]
    assert bounds[:4] == [10.0, 18.0, 32.4, 58.32] and bounds[-1] == float("inf") and len(bounds) == 34
    np.testing.assert_allclose(bounds[-2], 10 * 1.8**32, rtol=1e-5)
    assert tuple(bounds[:-1]) == LATENCY_BUCKETS_MICROS
    cumulative = [n for _, n in grpc_predict["buckets"]]
    assert cumulative == sorted(cumulative) and cumulative[-1] == 3
    # Microseconds: three beam searches take more than a millisecond, and less than a minute.
    assert 3 * 1e3 < grpc_predict["sum"] < 3 * 60e6
    # Beyond TensorFlow Serving: each signature's run time, batching included.
    signature = _histogram(after, ":keras_transformer:serving:signature_latency", model_name="toy",
                           signature_name="serving_default")
    assert signature["count"] == 5 and signature["sum"] > 0
    # Scraping is not itself counted, whatever the method (TensorFlow Serving's handler takes any).
    request = urllib.request.Request(f"http://localhost:{monitored.rest_port}/monitoring/prometheus/metrics",
                                     data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert b":tensorflow:serving:request_latency_bucket" in reply.read()
    assert _counts(_scrape(monitored.rest_port)) == _counts(after)
    assert not any(name.endswith("_created") for name in after)
    # The bounds as TensorFlow Serving writes them, absl::StrCat's six significant digits
    # (util/prometheus_exporter.cc): le="10", not prometheus-client's le="10.0".
    with urllib.request.urlopen(f"http://localhost:{monitored.rest_port}/monitoring/prometheus/metrics") as reply:
        text = reply.read().decode()
    labels = ('API="Predict"', 'entrypoint="GRPC"', 'model_name="toy"')
    written = [re.search(r'le=("[^"]*")', line)[1] for line in text.splitlines()
               if line.startswith(":tensorflow:serving:request_latency_bucket{") and all(x in line for x in labels)]
    assert written[:5] == ['"10"', '"18"', '"32.4"', '"58.32"', '"104.976"'] and written[-1] == '"+Inf"'
    assert written[-2] == f'"{10 * 1.8**32:.6g}"' == '"1.47476e+09"'
    assert ":keras_transformer:serving:signature_latency_sum" in text


def _http_status(port, path):
    try:
        with urllib.request.urlopen(f"http://localhost:{port}{path}", timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_path_is_the_configs_and_without_a_config_there_are_no_metrics(lean_exports, tmp_path):
    base, _, _ = lean_exports
    config = tmp_path / "monitoring.config"
    config.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    custom = ServerProcess(base, f"--monitoring_config_file={config}")
    try:
        assert ":tensorflow:serving:request_latency" in _scrape(custom.rest_port, "/metrics")
        assert _http_status(custom.rest_port, "/monitoring/prometheus/metrics") != 200
    finally:
        custom.stop()
    config.write_text("prometheus_config { enable: false }\n")
    off = ServerProcess(base, f"--monitoring_config_file={config}")
    try:
        assert _http_status(off.rest_port, "/monitoring/prometheus/metrics") != 200
    finally:
        off.stop()


def test_a_bad_monitoring_config_stops_the_start_naming_the_flag_and_the_line(tmp_path, capsys):
    config = tmp_path / "monitoring.config"
    config.write_text("prometheus_config {\n  enabled: true\n}\n")
    # A path that is not one: TensorFlow Serving would start and never serve it.
    from serving.metrics import parse_monitoring_config

    for path in ("metrics", "//metrics", "/m?x=1"):
        with pytest.raises(ValueError, match="URL path"):
            parse_monitoring_config(f'prometheus_config {{ enable: true path: "{path}" }}')
    assert parse_monitoring_config("") is None and parse_monitoring_config("prometheus_config { enable: true }")
    with pytest.raises(SystemExit):
        server_main([f"--model_base_path={tmp_path}", f"--monitoring_config_file={config}"])
    error = capsys.readouterr().err
    assert "--monitoring_config_file" in error and "2:" in error and "enabled" in error
    with pytest.raises(SystemExit):
        server_main([f"--model_base_path={tmp_path}", f"--monitoring_config_file={tmp_path / 'missing'}"])
    assert "--monitoring_config_file" in capsys.readouterr().err


def test_batching_load_and_availability_metrics(lean_exports, tmp_path):
    # TensorFlow Serving's batching metrics (batching/batching_util.h): each request's rows,
    # each batch's size after allowed_batch_sizes padding, the padding, the queue wait; and
    # TensorFlow's SavedModel load counters (tensorflow/cc/saved_model/loader.cc).
    import shutil
    import threading

    from serving.batching import BatchingParameters
    from serving.server import ModelServer
    from serving.server import ServerConfig
    from tests.serving.conftest import free_port

    base, _, _ = lean_exports
    models = tmp_path / "models"
    shutil.copytree(os.path.join(base, "1"), models / "1")
    (models / "2").mkdir()
    (models / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")  # fails its one attempt
    batching = BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000, allowed_batch_sizes=(4, 8))
    server = ModelServer(ServerConfig("toy", str(models), port=0, rest_api_port=free_port(), batching=batching,
                                      monitoring_path="/metrics", max_num_load_retries=0,
                                      file_system_poll_wait_seconds=0))
    server.start()
    try:
        with server.manager.serve("toy") as loaded:
            batcher = loaded.runners["serving_default"]
            warm_up = list(batcher.batch_sizes)  # the warm-up requests' batches
        # The first request's batch is held in the signature until the other requests are queued
        # behind it; they then make one batch, whatever the client threads' timing (the test
        # asserted a merge of requests that happened to arrive within 0.2 s of each other).
        run, entered, release = batcher.fn, threading.Event(), threading.Event()

        def held(inputs):
            entered.set()
            release.wait(60)
            return run(inputs)

        batcher.fn = held
        before = _scrape(server.rest_api_port, "/metrics")
        client = GrpcClient(f"localhost:{server.port}", "toy", retries=0)
        sizes = [3, 2, 2, 1]
        threads = [threading.Thread(target=client.translate, args=(["A man."] * n,)) for n in sizes]
        threads[0].start()
        assert entered.wait(60)
        for thread in threads[1:]:
            thread.start()
        deadline = time.monotonic() + 60
        while len(batcher._queue) < len(sizes) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        for thread in threads:
            thread.join(120)
        client.close()
        ran = list(batcher.batch_sizes)[len(warm_up):]
        families = _scrape(server.rest_api_port, "/metrics")
    finally:
        server.stop(5)
    assert ran == [3, 5]  # the first request alone, then the three queued behind it together

    def delta(name, **labels):
        new, old = _histogram(families, name, **labels), _histogram(before, name, **labels)
        return new["count"] - old.get("count", 0), new["sum"] - old.get("sum", 0)

    # Warm-up requests run through the batcher too: what the clients sent is the difference.
    assert delta(":tensorflow:serving:batching_session:input_batch_size") == (len(sizes), sum(sizes))
    processed = _histogram(families, ":tensorflow:serving:batching_session:processed_batch_size")
    padded = [4 if n <= 4 else 8 for n in ran]
    assert delta(":tensorflow:serving:batching_session:processed_batch_size") == (len(ran), sum(padded))
    assert [le for le, _ in processed["buckets"]][:3] == [1.0, 2.0, 4.0]
    padding = [sum(s.value for s in f[":tensorflow:serving:batching_session:padding_size"].samples
                   if s.name.endswith("_sum")) for f in (families, before)]
    assert padding[0] - padding[1] == sum(padded) - sum(ran)
    count, micros = delta(":tensorflow:serving:batching_session:queuing_latency", thread_pool_name="batch_threads")
    assert count == len(sizes) and micros > 0
    attempts = {(s.labels["model_path"], s.labels["status"]): s.value
                for s in families[":tensorflow:cc:saved_model:load_attempt_count"].samples}
    assert attempts == {(str(models / "1"), "success"): 1, (str(models / "2"), "fail"): 1}
    assert [s.value for s in families[":tensorflow:cc:saved_model:load_latency"].samples][0] > 0
    available = families[":keras_transformer:serving:available_versions"].samples
    assert [(s.labels["model_name"], s.value) for s in available] == [("toy", 1)]
