import json
import os
import socket
import subprocess
import sys
import warnings

import keras
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


def test_one_batch_gives_the_same_loss_and_step_on_one_device_and_two_replicas(tmp_path):
    # Keras divides a loss by the replica count only when it returns
    # unreduced values (keras/src/losses/loss.py, `reduce_values` returns a
    # scalar as it is), then sums the replicas' gradients. The two replicas'
    # halves of this batch hold 16 and 3 target tokens, so a per-replica
    # token mean would also weigh the short half's tokens 16/3 times more.
    out = tmp_path / "same.npz"
    _finish(_worker("same-step", out))
    result = np.load(out)
    assert int(result["mirrored-fit/replicas"]) == 2 and int(result["mirrored-custom-loop/replicas"]) == 2
    for name in ("mirrored-fit", "mirrored-custom-loop"):
        assert float(result[f"{name}/eval"]) == pytest.approx(float(result["one-device/eval"]), rel=1e-5), name
        assert float(result[f"{name}/loss"]) == pytest.approx(float(result["one-device/loss"]), rel=1e-5), name
        updates = sorted(k.split("/")[1] for k in result.files if k.startswith(f"{name}/update_"))
        assert len(updates) > 10
        for key in updates:
            expected = result[f"one-device/{key}"]
            # Summing two replicas' gradients rounds differently from one
            # device's: a tolerance relative to the update's size.
            atol = 1e-5 * max(float(np.abs(expected).max()), 1e-3)
            np.testing.assert_allclose(result[f"{name}/{key}"], expected, rtol=1e-4, atol=atol, err_msg=f"{name} {key}")
    assert np.abs(result["one-device/update_0"]).max() > 1e-3  # the step moved the weights


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


def test_mixed_precision_policy_on_cpu(tmp_path, monkeypatch):
    import tensorflow as tf

    from keras_transformer.training import distribute

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: the policy is mixed_float16 whatever the CPU")

    # bfloat16 only where the CPU computes it natively: emulated, a step takes twice as long as in
    # float32 (docs/benchmarks.md).
    try:
        assert training.set_mixed_precision(True, cpu_bfloat16=True) == "mixed_bfloat16"
        assert training.set_mixed_precision(True, cpu_bfloat16=False) == "float32"
        native = distribute.cpu_has_native_bfloat16()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert training.set_mixed_precision(True) == ("mixed_bfloat16" if native else "float32")
        assert any("no native bfloat16" in str(w.message) for w in caught) is not native
        assert training.set_mixed_precision(False) == "float32"
    finally:
        keras.config.set_dtype_policy("float32")
    x86 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"
    for text, native in ((x86, False), (x86.replace("avx512f", "avx512f avx512_bf16"), True),
                         (x86.replace("avx512f", "amx_bf16 avx512f"), True), (arm, True),
                         (arm.replace(" bf16", ""), False)):
        (tmp_path / "cpuinfo").write_text(text)
        assert distribute.cpu_has_native_bfloat16(str(tmp_path / "cpuinfo")) is native, text
    assert distribute.cpu_has_native_bfloat16(str(tmp_path / "missing")) is False
    (tmp_path / "cpuinfo").write_text(x86.replace("avx512f", "avx512f avx512_bf16"))
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN off: TensorFlow emulates bfloat16 anyway
    assert distribute.cpu_has_native_bfloat16(str(tmp_path / "cpuinfo")) is False


def test_custom_loop_resumes_after_the_epochs_its_checkpoint_holds(tmp_path):
    # Under a float16 loss scale whose first steps overflow, the optimizer
    # counts fewer steps than batches: the resumed loop must start from the
    # checkpoint's epoch, not from iterations // steps_per_epoch.
    import tensorflow as tf

    from tests.training.test_resume import _float16_model
    from tests.training.test_fit import _stream

    strategy = tf.distribute.get_strategy()
    first = _float16_model()
    history = training.train_custom_loop(first, strategy, _stream(), 6, 1, str(tmp_path))
    assert len(history["loss"]) == 1 and int(first.optimizer.iterations.numpy()) < 6
    resumed = _float16_model()
    history = training.train_custom_loop(resumed, strategy, _stream(), 6, 2, str(tmp_path))
    assert len(history["loss"]) == 1  # epoch 2 only
    names = [os.path.basename(p) for p in training.callbacks.list_checkpoints(str(tmp_path / "checkpoints"))]
    assert names == ["epoch-0001.weights.h5", "epoch-0002.weights.h5"]
