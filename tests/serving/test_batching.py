"""The dynamic batcher alone, with a NumPy function in place of a model: threads, shapes, failures."""

import re
import threading

import numpy as np
import pytest

from serving.batching import Batcher
from serving.batching import BatchingParameters
from serving.batching import parse_batching_parameters
from serving.errors import ServingError
from serving.errors import StatusCode


class Recorder:
    """doubles its input; fails a batch holding a negative value, as a graph assertion does."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, inputs):
        x = inputs["x"]
        with self.lock:
            self.calls.append(x.copy())
        if (x < 0).any():
            raise ServingError(StatusCode.INVALID_ARGUMENT, "x: a value is negative")
        return {"y": x * 2}


def _concurrently(batcher, requests):
    """Sends each request from its own thread at once; returns outputs or errors, in order."""
    results = [None] * len(requests)
    gate = threading.Barrier(len(requests))

    def one(i):
        gate.wait()
        try:
            results[i] = batcher({"x": requests[i]})["y"]
        except Exception as error:
            results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.parametrize("threads", [2, 4])
def test_several_batch_threads_survive_sharing_one_queue_deadline(threads):
    # With two threads waiting on the same first request's deadline, the one that lost the race
    # used to get an empty batch, raise on batch[0] and die: later requests then hung.
    fn = Recorder()
    batcher = Batcher(fn, BatchingParameters(max_batch_size=4, batch_timeout_micros=20_000, num_batch_threads=threads))
    try:
        for round_ in range(15):
            requests = [np.array([round_ * 10 + i]) for i in range(6)]
            results = _concurrently(batcher, requests)
            for request, result in zip(requests, results):
                np.testing.assert_array_equal(result, request * 2)
        assert all(thread.is_alive() for thread in batcher._threads)
        assert max(len(call) for call in fn.calls) <= 4 and sum(len(call) for call in fn.calls) == 90
    finally:
        batcher.close()
    assert not any(thread.is_alive() for thread in batcher._threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_bad_request_fails_alone_in_its_batch(threads):
    fn = Recorder()
    batcher = Batcher(
        fn, BatchingParameters(max_batch_size=16, batch_timeout_micros=1_000_000, num_batch_threads=threads)
    )
    try:
        requests = [np.array([1, 2]), np.array([-5]), np.array([3]), np.array([4, -1, 6])]
        results = _concurrently(batcher, requests)
    finally:
        batcher.close()
    assert any(len(call) > 2 for call in fn.calls), fn.calls  # they did share a batch
    np.testing.assert_array_equal(results[0], [2, 4])
    np.testing.assert_array_equal(results[2], [6])
    for bad in (results[1], results[3]):
        assert isinstance(bad, ServingError) and bad.code == StatusCode.INVALID_ARGUMENT
        assert "negative" in bad.message


def test_an_unexpected_error_reaches_every_caller_and_the_thread_goes_on():
    calls = []

    def flaky(inputs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of luck")
        return {"y": inputs["x"]}

    batcher = Batcher(flaky, BatchingParameters(max_batch_size=8, batch_timeout_micros=1_000_000))
    try:
        first = _concurrently(batcher, [np.array([1]), np.array([2])])
        assert len(calls) == 1 and all(isinstance(r, RuntimeError) for r in first), first
        np.testing.assert_array_equal(batcher({"x": np.array([7])})["y"], [7])
    finally:
        batcher.close()


def test_a_task_over_max_batch_size_is_refused_as_tensorflow_serving_does():
    # tensorflow/core/kernels/batching_util/shared_batch_scheduler.h, ValidateBatchTaskQueueCapacity:
    # "Task size %d is larger than maximum input batch size %d", INVALID_ARGUMENT (it ran alone here).
    fn = Recorder()
    batcher = Batcher(fn, BatchingParameters(max_batch_size=3))
    try:
        with pytest.raises(ServingError, match="Task size 4 is larger than maximum input batch size 3") as caught:
            batcher({"x": np.arange(4)})
        assert caught.value.code == StatusCode.INVALID_ARGUMENT and fn.calls == []
        np.testing.assert_array_equal(batcher({"x": np.arange(3)})["y"], [0, 2, 4])
    finally:
        batcher.close()


def test_variable_length_inputs_are_padded_with_each_tensors_first_value():
    # tensorflow_serving/batching/batching_util.cc, PadTensor: the pad value is the tensor's own
    # first element; every dimension past the batch one grows to the batch's largest.
    fn = Recorder()
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=1_000_000, pad_variable_length_inputs=True)
    batcher = Batcher(fn, params)
    try:
        results = _concurrently(batcher, [np.array([[7, 1]]), np.array([[5, 2, 3], [4, 4, 4]])])
    finally:
        batcher.close()
    assert len(fn.calls) == 1, fn.calls
    merged = fn.calls[0]
    assert merged.shape == (3, 3)
    rows = {tuple(r) for r in merged}
    assert rows == {(7, 1, 7), (5, 2, 3), (4, 4, 4)}
    shapes = sorted(r.shape for r in results)
    assert shapes == [(1, 3), (2, 3)]  # each caller gets its rows, at the batch's width


def test_without_padding_inputs_of_other_widths_go_to_other_batches():
    # TensorFlow Serving fails such a batch with FAILED_PRECONDITION (tensorflow_serving/batching/batching_session.cc,
    # MergeInputTensors); here neither request is harmed.
    fn = Recorder()
    batcher = Batcher(fn, BatchingParameters(max_batch_size=8, batch_timeout_micros=1_000_000))
    try:
        results = _concurrently(batcher, [np.array([[1, 2]]), np.array([[3, 4, 5]]), np.array([[6, 7]])])
    finally:
        batcher.close()
    np.testing.assert_array_equal(results[0], [[2, 4]])
    np.testing.assert_array_equal(results[1], [[6, 8, 10]])
    np.testing.assert_array_equal(results[2], [[12, 14]])
    assert sorted(call.shape for call in fn.calls) == [(1, 3), (2, 2)]


def test_allowed_batch_sizes_pad_with_the_last_tasks_first_row():
    # tensorflow_serving/batching/batching_session.cc, MergeInputTensors: "Use the first row of this task's tensor as
    # the padding data", this task being the batch's last.
    fn = Recorder()
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=1_000_000, allowed_batch_sizes=(4, 8))
    batcher = Batcher(fn, params)
    try:
        alone = batcher({"x": np.array([9])})
    finally:
        batcher.close()
    np.testing.assert_array_equal(alone["y"], [18])
    np.testing.assert_array_equal(fn.calls[0], [9, 9, 9, 9])
    fn.calls.clear()
    batcher = Batcher(fn, params)
    try:
        results = _concurrently(batcher, [np.array([1, 2]), np.array([5])])
    finally:
        batcher.close()
    assert len(fn.calls) == 1, fn.calls
    # Whichever joined first, the padding row is the first row of the task that joined last.
    assert fn.calls[0].tolist() in ([1, 2, 5, 5], [5, 1, 2, 1])
    assert sorted(r.tolist() for r in results) == [[2, 4], [10]]


def test_recent_batch_sizes_are_bounded():
    batcher = Batcher(lambda inputs: {"y": inputs["x"]}, BatchingParameters(max_batch_size=2))
    try:
        for i in range(Batcher.RECENT_BATCHES + 50):
            batcher({"x": np.array([i])})
    finally:
        batcher.close()
    assert len(batcher.batch_sizes) == Batcher.RECENT_BATCHES


def test_batching_parameters_in_every_text_format_form():
    # Protobuf text format allows a colon before a message field's braces.
    text = "max_batch_size: { value: 32 }\nbatch_timeout_micros { value: 500 }  # comment\nallowed_batch_sizes: 32\n"
    params = parse_batching_parameters(text + "pad_variable_length_inputs: true\n")
    assert params.max_batch_size == 32 and params.batch_timeout_micros == 500
    assert params.allowed_batch_sizes == (32,) and params.pad_variable_length_inputs
    with pytest.raises(ValueError, match="max_batch"):
        parse_batching_parameters("max_batch { value: 3 }")
    # Fields of the newest BatchingParameters that this server accepts and ignores.
    parse_batching_parameters('thread_pool_name { value: "pool" }\nenable_large_batch_splitting { value: true }\n'
                              "max_execution_batch_size { value: 8 }\n")


@pytest.mark.parametrize("text, reason", [
    ("max_batch_size: 32", '1:17 : \'max_batch_size: 32\': Expected "{"'),  # a wrapped field needs { value: N }
    ("max_batch_size { value: 32 }\nmax_batch_size { value: 64 }", 'should not have multiple "max_batch_size"'),
    ("max_batch_size { value: 32 } }", "1:30 : 'max_batch_size { value: 32 } }': Expected identifier or number"),
    ("max_batch_size { value: 3.5 }", "Couldn't parse integer: 3.5"),
    ("pad_variable_length_inputs: maybe", 'Expected "true" or "false"'),
    ("max_batch_size { valu: 3 }", 'has no field named "valu"'),
])
def test_malformed_batching_parameters_are_refused_naming_the_fault(text, reason):
    # TensorFlow Serving reads the file with protobuf's text-format parser
    # (model_servers/server.cc, ParseProtoTextFile; the message in
    # servables/tensorflow/session_bundle_config.proto), which refuses each of these.
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_batching_parameters(text)


def test_bisection_finds_the_bad_request_in_few_runs_and_answers_each_once():
    fn = Recorder()
    batcher = Batcher(fn, BatchingParameters(max_batch_size=64, batch_timeout_micros=1_000_000))
    try:
        requests = [np.array([i]) for i in range(1, 16)] + [np.array([-1])]
        results = _concurrently(batcher, requests)
    finally:
        batcher.close()
    assert max(len(call) for call in fn.calls) == 16, fn.calls  # one batch first
    assert len(fn.calls) <= 1 + 2 * 4, len(fn.calls)  # then halves down to the bad one: 2 log2 16
    for request, result in zip(requests[:-1], results[:-1]):
        np.testing.assert_array_equal(result, request * 2)
    assert isinstance(results[-1], ServingError) and results[-1].code == StatusCode.INVALID_ARGUMENT
    succeeded = np.concatenate([call for call in fn.calls if not (call < 0).any()])
    assert sorted(succeeded.tolist()) == list(range(1, 16))  # each good row ran to an answer once


def test_out_of_memory_is_not_bisected_when_padding_restores_the_size():
    calls = []

    def exhausted(inputs):
        calls.append(len(inputs["x"]))
        raise ServingError(StatusCode.RESOURCE_EXHAUSTED, "out of memory")

    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=1_000_000, allowed_batch_sizes=(8,))
    batcher = Batcher(exhausted, params)
    try:
        results = _concurrently(batcher, [np.array([i]) for i in range(4)])
    finally:
        batcher.close()
    assert calls == [8], calls  # each half would be padded back to 8 rows: no point in retrying
    assert all(isinstance(r, ServingError) and r.code == StatusCode.RESOURCE_EXHAUSTED for r in results)


def test_version_directories_are_int64_names_as_tensorflow_serving_reads_them(tmp_path):
    # A 20-digit timestamp does not fit TensorFlow Serving's int64 version (it was loaded, then every
    # response failed to set model_spec.version); "007" is not the directory str(7) would open;
    # non-ASCII digits are not versions.
    from serving.servables import versions_on_disk

    for name in ("1", "12", "007", "20261201123045123456", "\u0663", "x1", "9223372036854775807"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "5").mkdir()  # no saved_model.pb yet
    assert versions_on_disk(str(tmp_path)) == [1, 12, 9223372036854775807]


def test_tensorflow_error_codes_pass_through_as_grpc_codes():
    # TensorFlow's status codes are gRPC's (tensorflow/core/protobuf/error_codes.proto): UNAVAILABLE
    # stays retryable, DEADLINE_EXCEEDED is 504, not INTERNAL (HTTP 500).
    import tensorflow as tf

    from serving.servables import _GRPC_CODES

    for tf_code, grpc_code in ((tf.errors.UNAVAILABLE, StatusCode.UNAVAILABLE),
                               (tf.errors.DEADLINE_EXCEEDED, StatusCode.DEADLINE_EXCEEDED),
                               (tf.errors.INVALID_ARGUMENT, StatusCode.INVALID_ARGUMENT),
                               (tf.errors.RESOURCE_EXHAUSTED, StatusCode.RESOURCE_EXHAUSTED),
                               (tf.errors.FAILED_PRECONDITION, StatusCode.FAILED_PRECONDITION)):
        assert _GRPC_CODES[tf_code] == grpc_code


def test_a_scalar_input_is_refused_under_batching_as_tensorflow_servings_batching_session_refuses_it(tmp_path):
    # tensorflow_serving/batching/batching_session.cc, ComputeInputSize, calls batching_util.h's
    # ComputeTensorBatchSize for every request under --enable_batching, whatever its signature:
    # INVALID_ARGUMENT "Batching Run() input tensors must have at least one dimension". Without
    # batching the signature runs. Under batching it ran, unbatched.
    import tensorflow as tf

    from serving.servables import LoadedVersion

    class Scale(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="factor"),
                                      tf.TensorSpec([None], tf.float32, name="x")])
        def scale(self, factor, x):
            return {"y": x * factor}

    module = Scale()
    path = str(tmp_path / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.scale})
    inputs = {"factor": np.asarray(2.0, np.float32), "x": np.asarray([1.0, 2.0], np.float32)}
    plain = LoadedVersion("m", 1, path)
    batched = LoadedVersion("m", 1, path, BatchingParameters(max_batch_size=8))
    try:
        assert plain.run("serving_default", inputs)["y"].tolist() == [2.0, 4.0]
        with pytest.raises(ServingError) as error:
            batched.run("serving_default", inputs)
        assert (error.value.code, error.value.message) == (
            StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have at least one dimension")
    finally:
        plain.close()
        batched.close()
