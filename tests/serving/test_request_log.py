"""The request log (--request_log_file): one JSON line per request, text only when asked."""

import json
import os
import threading

import numpy as np
import pytest

from serving.client import GrpcClient
from serving.client import RestClient
from serving.client import ServingError
from serving.core import ModelConfig
from serving.server import ModelServer
from serving.server import ServerConfig
from serving.server import main as server_main
from tests.serving.conftest import free_port

SECRET = "A man rides a bike."


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("include_text", [False, True])
def test_each_request_is_one_line_and_its_text_is_written_only_when_asked(lean_exports, tmp_path, include_text):
    base, _, _ = lean_exports
    path = str(tmp_path / "requests.jsonl")
    server = ModelServer(ServerConfig(models=(ModelConfig("toy", base, labels=(("stable", 1),)),), port=0,
                                      rest_api_port=free_port(), request_log_file=path,
                                      request_log_include_text=include_text,
                                      allow_version_labels_for_unavailable_models=True))
    server.start()
    try:
        grpc_client = GrpcClient(f"localhost:{server.port}", "toy", retries=0)
        grpc_client.translate([SECRET, "Two dogs run."])
        with pytest.raises(ServingError):
            grpc_client.predict({"text": np.array([b"a"], object)}, "no_such_signature")
        RestClient(f"localhost:{server.rest_api_port}",
                   "toy", version_label="stable", retries=0).translate([SECRET])
        # Lines written from many threads at once stay whole.
        threads = [threading.Thread(target=lambda: [grpc_client.translate(["A bike."]) for _ in range(5)])
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        grpc_client.close()
    finally:
        server.stop(5)
    lines = _lines(path)
    assert len(lines) == 3 + 40
    ok, refused, by_label = lines[0], lines[1], lines[2]
    assert {k: ok[k] for k in ("model", "version", "signature", "api", "entrypoint", "status", "batch_size")} == {
        "model": "toy", "version": 1, "signature": "serving_default", "api": "Predict", "entrypoint": "GRPC",
        "status": "OK", "batch_size": 2}
    assert ok["latency_ms"] > 0 and ok["time"].endswith("Z")
    # Refused before a version ran it: no version, signature or batch size.
    assert (refused["status"], refused["version"], refused["batch_size"]) == ("FAILED_PRECONDITION", None, None)
    assert (by_label["entrypoint"], by_label["api"], by_label["version"], by_label["status"]) == (
        "REST", "predict", 1, "OK")
    text = open(path, encoding="utf-8").read()
    if include_text:
        assert ok["inputs"] == {"text": [SECRET, "Two dogs run."]}
    else:
        assert SECRET not in text and "Two dogs" not in text and "inputs" not in ok


def test_a_log_file_that_cannot_be_opened_stops_the_start_naming_the_flag(lean_exports, tmp_path, capsys):
    base, _, _ = lean_exports
    with pytest.raises(SystemExit):
        server_main([f"--model_base_path={base}", "--port=0", "--rest_api_port=0",
                     f"--request_log_file={os.path.join(tmp_path, 'missing', 'log.jsonl')}"])
    assert "--request_log_file" in capsys.readouterr().err
