"""Server-side dynamic batching, configured like TensorFlow Serving.

Concurrent requests to one signature are queued; a batch thread takes the
first waiting request, keeps collecting until the batch holds
`max_batch_size` rows or `batch_timeout_micros` have passed since that first
request arrived, runs the signature once on the concatenated inputs, and
hands each request its own rows of the outputs.
"""

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from serving.errors import ServingError
from serving.errors import StatusCode
from serving.protos import parse_text

log = logging.getLogger("serving")


@dataclasses.dataclass
class BatchingParameters:
    """The fields of TensorFlow Serving's `BatchingParameters` this server uses.

    Defaults are TensorFlow Serving's, except `num_batch_threads` (there: the
    number of CPUs; here 1, which keeps a 2-core machine's cores for the
    intra-op thread pool that every batch already uses).
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 1
    allowed_batch_sizes: Tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"batching parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batching parameter batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = tuple(self.allowed_batch_sizes)
        if sizes and (list(sizes) != sorted(sizes) or sizes[-1] != self.max_batch_size):
            raise ValueError(
                "allowed_batch_sizes must increase and end with max_batch_size "
                f"({self.max_batch_size}), got {list(sizes)}"
            )


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parses TensorFlow Serving's batching parameters file (protobuf text
    format, read by protobuf's parser as TensorFlow Serving reads it).

    Example:
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 5000 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32

    `thread_pool_name`, `enable_large_batch_splitting` and
    `max_execution_batch_size` are accepted and ignored.

    Raises:
        ValueError: text that does not parse, an unknown field or a field
            given twice (protobuf's message, with line and column), or a value
            out of range, named.
    """
    message = parse_text("BatchingParameters", text, "batching parameters")
    if message.enable_large_batch_splitting.value or message.HasField("max_execution_batch_size"):
        # TensorFlow Serving would split tasks into batches of at most max_execution_batch_size.
        log.warning("batching parameters: enable_large_batch_splitting and max_execution_batch_size are ignored: "
                    "batches run at up to max_batch_size rows, and larger tasks are refused")
    values: Dict[str, object] = {}
    for field in dataclasses.fields(BatchingParameters):
        if field.name == "allowed_batch_sizes":
            if message.allowed_batch_sizes:
                values[field.name] = tuple(message.allowed_batch_sizes)
        elif field.name == "pad_variable_length_inputs":
            values[field.name] = message.pad_variable_length_inputs
        elif message.HasField(field.name):
            values[field.name] = getattr(message, field.name).value
    return BatchingParameters(**values)


class _Task:
    __slots__ = ("inputs", "rows", "shape_key", "arrived", "done", "outputs", "error")

    def __init__(self, inputs, rows, shape_key):
        self.inputs = inputs
        self.rows = rows
        self.shape_key = shape_key  # tasks with equal keys can be concatenated as they are
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.outputs = None
        self.error = None


class Batcher:
    """Batches concurrent calls of one function whose inputs and outputs are batch-major arrays.

    Args:
        fn: dict of np arrays [rows, ...] -> dict of np arrays [rows, ...].
        params: `BatchingParameters`.
        name: for error messages and thread names.

    Where this differs from TensorFlow Serving's batching session
    (tensorflow_serving/batching/batching_session.cc), it is on purpose,
    so that one request cannot fail the others:

    - Without `pad_variable_length_inputs`, tasks whose inputs differ in a
      dimension past the batch one go into different batches (TensorFlow
      Serving fails the whole batch with FAILED_PRECONDITION).
    - When a batch of several requests fails with INVALID_ARGUMENT (an
      assertion on one request's content, such as invalid UTF-8 or too many
      tokens) or RESOURCE_EXHAUSTED, its halves are run again, down to the
      requests at fault, so only they get the error.
    """

    RECENT_BATCHES = 1000

    def __init__(
        self, fn: Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]], params: BatchingParameters, name="",
        metrics=None,
    ):
        self.fn = fn
        self.metrics = metrics  # a serving.metrics.ServingMetrics (its batching metrics), or None
        self.params = params
        self.name = name
        self._queue: List[_Task] = []
        self._cond = threading.Condition()
        self._closed = False
        # Rows of the most recent executed batches, for tests and stats.
        self.batch_sizes: Deque[int] = collections.deque(maxlen=self.RECENT_BATCHES)
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch-{name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        rows = len(next(iter(inputs.values())))
        if rows > self.params.max_batch_size:
            # TensorFlow's shared batch scheduler refuses such a task, with or without
            # large-batch splitting (tensorflow/core/kernels/batching_util/shared_batch_scheduler.h,
            # ValidateBatchTaskQueueCapacity).
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"Task size {rows} is larger than maximum input batch size {self.params.max_batch_size}",
            )
        if self.params.pad_variable_length_inputs:
            key = None
        else:
            key = tuple(sorted((k, np.shape(v)[1:]) for k, v in inputs.items()))
        task = _Task(inputs, rows, key)
        with self._cond:
            if self._closed:
                raise ServingError(StatusCode.UNAVAILABLE, "the server is shutting down")
            limit = self.params.max_enqueued_batches * self.params.max_batch_size
            if sum(t.rows for t in self._queue) + rows > limit:
                raise ServingError(
                    StatusCode.UNAVAILABLE,
                    f"batching queue of {self.name or 'this signature'} is full "
                    f"({self.params.max_enqueued_batches} batches); retry later",
                )
            self._queue.append(task)
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def close(self):
        """Runs what is queued, then stops the batch threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _take_batch(self) -> Optional[List[_Task]]:
        """The next batch (never empty), or None once closed and drained.

        Several batch threads may wait on one queue: each looks at the queue
        afresh after every wake-up, so a thread that finds the tasks it was
        waiting for taken by another goes back to waiting.
        """
        timeout = self.params.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                first = self._queue[0]
                fits = [t for t in self._queue if t.shape_key == first.shape_key]
                rows = sum(t.rows for t in fits)
                remaining = first.arrived + timeout - time.monotonic()
                if rows >= self.params.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            batch, total = [], 0
            for task in fits:
                if total + task.rows > self.params.max_batch_size:
                    break
                batch.append(task)
                total += task.rows
            taken = set(map(id, batch))
            self._queue = [t for t in self._queue if id(t) not in taken]
            if self._queue:
                self._cond.notify()  # what is left may be another thread's batch
            return batch

    def _loop(self):
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as error:  # never leave a caller waiting, nor the thread dead
                for task in batch:
                    if not task.done.is_set():
                        task.error = ServingError(StatusCode.INTERNAL, f"batch failed: {error}")
                        task.done.set()

    def _merge(self, batch: List[_Task]) -> Dict[str, np.ndarray]:
        total = sum(t.rows for t in batch)
        padded = _allowed_size(total, self.params.allowed_batch_sizes)
        inputs = {}
        for key in batch[0].inputs:
            parts = [np.asarray(t.inputs[key]) for t in batch]
            if self.params.pad_variable_length_inputs:
                parts = _pad_to_common_shape(parts)
            if padded > total:
                # As TensorFlow Serving: copies of the last task's first row
                # (batching_session.cc, MergeInputTensors).
                parts.append(np.repeat(parts[-1][:1], padded - total, axis=0))
            inputs[key] = np.concatenate(parts, axis=0)
        return inputs

    def _run(self, batch: List[_Task]):
        bisect = False
        started = time.monotonic()
        try:
            outputs = self.fn(self._merge(batch))
        except ServingError as error:
            if not self._bisectable(batch, error):
                self._fail(batch, error)
                return
            bisect = True
        except BaseException as error:  # every waiting request hears about it
            self._fail(batch, error)
            return
        if bisect:
            # A request's content failed the batch: run each half again, down
            # to the requests at fault, so only they hear of it (one bad
            # request among N costs about 2 log2 N extra runs). Outside the
            # except block, so the failed batch's traceback is not kept alive.
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        total = sum(t.rows for t in batch)
        self.batch_sizes.append(total)
        if self.metrics is not None:
            # TensorFlow Serving's default pool name (batching_session.cc: "batch_threads").
            self.metrics.record_batch([t.rows for t in batch], total,
                                      _allowed_size(total, self.params.allowed_batch_sizes), "batch_threads",
                                      [t.arrived for t in batch], started)
        start = 0
        for task in batch:
            task.outputs = {k: v[start:start + task.rows] for k, v in outputs.items()}
            start += task.rows
            task.done.set()

    def _bisectable(self, batch: List[_Task], error: ServingError) -> bool:
        if len(batch) < 2 or error.code not in _CONTENT_ERRORS:
            return False
        if error.code == StatusCode.RESOURCE_EXHAUSTED:
            # Out of memory for its size: halves help only if they run smaller
            # (allowed_batch_sizes may pad each half back to the same size).
            total = sum(t.rows for t in batch)
            half = sum(t.rows for t in batch[: len(batch) // 2])
            allowed = self.params.allowed_batch_sizes
            return (
                max(_allowed_size(half, allowed), _allowed_size(total - half, allowed)) < _allowed_size(total, allowed)
            )
        return True

    @staticmethod
    def _fail(batch, error):
        for task in batch:
            task.error = error
            task.done.set()


# Errors one request's content can cause for its whole batch: an assertion on
# it (invalid UTF-8, too many tokens), or a size that exhausts memory.
_CONTENT_ERRORS = (StatusCode.INVALID_ARGUMENT, StatusCode.RESOURCE_EXHAUSTED)


def _pad_to_common_shape(parts: List[np.ndarray]) -> List[np.ndarray]:
    """Each array padded at the end of every dimension past the first to the
    largest size among `parts`, with its own first element, as TensorFlow
    Serving's `pad_variable_length_inputs` does (batching_util.cc, PadTensor:
    "using existing values in padding")."""
    if len({p.shape[1:] for p in parts}) <= 1:
        return parts
    ranks = {p.ndim for p in parts}
    if len(ranks) > 1:
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"inputs of different ranks cannot be batched: {sorted(ranks)}")
    target = np.max([p.shape for p in parts], axis=0)
    out = []
    for p in parts:
        widths = [(0, 0)] + [(0, int(t - n)) for t, n in zip(target[1:], p.shape[1:])]
        if p.size == 0:
            out.append(np.zeros((p.shape[0], *target[1:]), p.dtype))
        else:
            out.append(np.pad(p, widths, mode="constant", constant_values=p.flat[0]))
    return out


def _allowed_size(rows: int, allowed: Tuple[int, ...]) -> int:
    for size in allowed:
        if size >= rows:
            return size
    return rows
