import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_transformer import training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker(mode, out, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.training.distributed_worker", mode, str(out)],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _finish(process, timeout=180):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"worker timed out:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _weights(result):
    return [result[f"arr_{i}"] for i in range(len([k for k in result.files if k.startswith("arr_")]))]


def test_mirrored_on_two_logical_cpus(tmp_path):
    out = tmp_path / "mirrored.npz"
    _finish(_worker("mirrored", out))
    result = np.load(out)
    assert int(result["replicas"]) == 2 and int(result["copies"]) == 2
    assert int(result["steps"]) == 4
    assert float(result["change"]) > 1e-4  # it trained
    assert float(result["replica_gap"]) == 0.0  # and both replicas hold the same weights


def test_multi_worker_on_two_local_processes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(_worker("multi-worker", tmp_path / f"worker{index}.npz", {"TF_CONFIG": config}))
    for worker in workers:
        _finish(worker)
    first, second = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert int(first["replicas"]) == 2 and int(first["steps"]) == 4
    assert float(first["change"]) > 1e-4
    assert np.isfinite(first["loss"]).all()
    for a, b in zip(_weights(first), _weights(second)):
        np.testing.assert_array_equal(a, b)


def test_strategy_switch_errors(monkeypatch):
    with pytest.raises(ValueError, match="strategy"):
        training.make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        training.make_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        training.make_strategy("multi-worker")


def test_mixed_precision_policy_on_cpu():
    assert training.set_mixed_precision(True) == "mixed_bfloat16"
    assert training.set_mixed_precision(False) == "float32"
