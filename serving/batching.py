"""Server-side dynamic batching, configured like TensorFlow Serving.

Concurrent requests to one signature are queued; a batch thread takes the
first waiting request, keeps collecting until the batch holds
`max_batch_size` rows or `batch_timeout_micros` have passed since that first
request arrived, runs the signature once on the concatenated inputs, and
hands each request its own rows of the outputs.
"""

import dataclasses
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from serving.errors import ServingError
from serving.errors import StatusCode


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


_WRAPPED = re.compile(r"(\w+)\s*\{\s*value\s*:\s*([^\s}]+)\s*\}")
_PLAIN = re.compile(r"(\w+)\s*:\s*([^\s{}]+)")
_IGNORED = {"thread_pool_name", "enable_large_batch_splitting", "max_execution_batch_size"}


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parses TensorFlow Serving's batching parameters file (protobuf text format).

    Example:
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 5000 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32

    Raises:
        ValueError: an unknown field or a value that does not parse, named.
    """
    fields = {f.name: f for f in dataclasses.fields(BatchingParameters)}
    values: Dict[str, object] = {}
    allowed: List[int] = []
    text = re.sub(r"#[^\n]*", "", text)
    entries = _WRAPPED.findall(text)
    rest = _WRAPPED.sub(" ", text)
    entries += _PLAIN.findall(rest)
    leftover = _PLAIN.sub(" ", rest).strip()
    if leftover:
        raise ValueError(f"batching parameters: cannot parse {leftover[:60]!r}")
    for name, raw in entries:
        if name in _IGNORED:
            continue
        if name not in fields:
            raise ValueError(f"batching parameters: unknown field {name!r} (known: {', '.join(sorted(fields))})")
        try:
            if name == "pad_variable_length_inputs":
                if raw not in ("true", "false"):
                    raise ValueError(raw)
                values[name] = raw == "true"
            elif name == "allowed_batch_sizes":
                allowed.append(int(raw))
            else:
                values[name] = int(raw)
        except ValueError:
            raise ValueError(f"batching parameters: {name} must be an integer, got {raw!r}") from None
    if allowed:
        values["allowed_batch_sizes"] = tuple(allowed)
    return BatchingParameters(**values)


class _Task:
    __slots__ = ("inputs", "rows", "arrived", "done", "outputs", "error")

    def __init__(self, inputs, rows):
        self.inputs = inputs
        self.rows = rows
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.outputs = None
        self.error = None


class Batcher:
    """Batches concurrent calls of one function of rank-1 ([batch]) arrays.

    Args:
        fn: dict of np arrays [rows] -> dict of np arrays [rows].
        params: `BatchingParameters`.
        name: for error messages and thread names.
    """

    def __init__(self, fn: Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]], params: BatchingParameters, name=""):
        self.fn = fn
        self.params = params
        self.name = name
        self._queue: List[_Task] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batch_sizes: List[int] = []  # rows per executed batch, for tests and stats
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch-{name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        rows = len(next(iter(inputs.values())))
        if rows > self.params.max_batch_size:
            # Larger than any batch: runs on its own, as it is.
            return self.fn(inputs)
        task = _Task(inputs, rows)
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
        timeout = self.params.batch_timeout_micros / 1e6
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + timeout
            while True:
                rows = sum(t.rows for t in self._queue)
                remaining = deadline - time.monotonic()
                if rows >= self.params.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            batch, total = [], 0
            while self._queue and total + self._queue[0].rows <= self.params.max_batch_size:
                task = self._queue.pop(0)
                batch.append(task)
                total += task.rows
            return batch

    def _loop(self):
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: List[_Task]):
        total = sum(t.rows for t in batch)
        padded = _allowed_size(total, self.params.allowed_batch_sizes)
        inputs = {}
        for key in batch[0].inputs:
            parts = [t.inputs[key] for t in batch]
            if padded > total:  # pad with copies of the first row, as TensorFlow Serving does
                parts.append(np.repeat(parts[0][:1], padded - total, axis=0))
            inputs[key] = np.concatenate(parts, axis=0)
        try:
            outputs = self.fn(inputs)
        except BaseException as error:  # every waiting request hears about it
            for task in batch:
                task.error = error
                task.done.set()
            return
        self.batch_sizes.append(total)
        start = 0
        for task in batch:
            task.outputs = {k: v[start:start + task.rows] for k, v in outputs.items()}
            start += task.rows
            task.done.set()


def _allowed_size(rows: int, allowed: Tuple[int, ...]) -> int:
    for size in allowed:
        if size >= rows:
            return size
    return rows
