"""Versions of a SavedModel on disk, loaded, served and swapped like TensorFlow Serving does.

`ModelManager` watches a model base path (`base/1/`, `base/2/`, ...), serves
the latest version, loads a newer one when it appears (warm-up included)
and unloads the old one once the requests that hold it have finished.
`LoadedVersion` checks each request against the signature it names and runs
it, through a `Batcher` where batching is on.
"""

import contextlib
import logging
import os
import re
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from serving.batching import Batcher
from serving.batching import BatchingParameters
from serving.errors import ServingError
from serving.errors import StatusCode

log = logging.getLogger("serving")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_SIGNATURE = "serving_default"

# TensorFlow Serving's ModelVersionStatus.State values.
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
STATE_NAMES = {START: "START", LOADING: "LOADING", AVAILABLE: "AVAILABLE", UNLOADING: "UNLOADING", END: "END"}


_GRPC_CODES = {code.value[0]: code for code in StatusCode}


def _short(message: str) -> str:
    """What a TensorFlow error says, without the graph's stack and node listing."""
    asserted = re.search(r"assertion failed: \[(.*?)\]", message)
    if asserted:
        return asserted.group(1)
    lines = [
        line.strip() for line in message.splitlines()
        if line.strip() and not line[0].isspace() and not line.startswith(("Graph execution error", "Detected at node"))
    ]
    return (re.sub(r"\s*\[\[\{\{node .*$", "", lines[-1]) if lines else "error")[:500]


class LoadedVersion:
    """One SavedModel version in memory, with its signatures and in-flight count."""

    def __init__(self, name: str, version: int, path: str, batching: Optional[BatchingParameters] = None,
                 metrics=None):
        self.name = name
        self.metrics = metrics
        self.version = version
        self.path = path
        self.module = tf.saved_model.load(path)
        self.signatures = dict(self.module.signatures)
        self.inputs = {k: fn.structured_input_signature[1] for k, fn in self.signatures.items()}
        self.outputs = {k: fn.structured_outputs for k, fn in self.signatures.items()}
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        self.signature_defs = {
            k: v for k, v in proto.meta_graphs[0].signature_def.items() if k in self.signatures
        }
        self.runners = {key: self._runner(key) for key in self.signatures}
        if batching is not None:
            for key in self.signatures:
                # Every signature whose tensors are all batch-major, as
                # TensorFlow Serving batches every signature.
                specs = list(self.inputs[key].values()) + list(self.outputs[key].values())
                if all(spec.shape.rank and spec.shape[0] is None for spec in specs):
                    self.runners[key] = Batcher(self.runners[key], batching, name=f"{name}/{version}/{key}")
        self._in_flight = 0
        self._idle = threading.Condition()

    def _runner(self, key):
        fn, specs = self.signatures[key], self.inputs[key]

        def run(inputs):
            try:
                outputs = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
            except tf.errors.OpError as error:
                # TensorFlow's codes are gRPC's: passed through, as TensorFlow Serving does.
                raise ServingError(
                    _GRPC_CODES.get(error.error_code, StatusCode.INTERNAL), _short(error.message)
                ) from None
            except UnicodeDecodeError:  # TensorFlow's own message held the request's bytes
                raise ServingError(
                    StatusCode.INVALID_ARGUMENT, "the model rejected the input (is every string valid UTF-8?)"
                ) from None
            return {k: v.numpy() for k, v in outputs.items()}

        return run

    def check_inputs(self, signature_name: str, dtypes: Dict[str, tf.DType], shapes: Dict[str, tuple]):
        """Raises `ServingError` naming what is wrong with a request's inputs."""
        if signature_name not in self.signatures:
            # FAILED_PRECONDITION, as TensorFlow Serving answers
            # (tensorflow_serving/servables/tensorflow/predict_util.cc).
            raise ServingError(
                StatusCode.FAILED_PRECONDITION,
                f"Serving signature key \"{signature_name}\" not found. This model has: "
                f"{', '.join(sorted(self.signatures))}",
            )
        specs = self.inputs[signature_name]
        missing = sorted(set(specs) - set(dtypes))
        extra = sorted(set(dtypes) - set(specs))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unexpected input(s) {extra}")
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"signature \"{signature_name}\": {'; '.join(parts)}; it takes {sorted(specs)}",
            )
        rows = set()
        for key, spec in specs.items():
            if dtypes[key] != spec.dtype:
                raise ServingError(
                    StatusCode.INVALID_ARGUMENT,
                    f"input \"{key}\" must be {spec.dtype.name}, got {dtypes[key].name}",
                )
            if not spec.shape.is_compatible_with(shapes[key]):
                raise ServingError(
                    StatusCode.INVALID_ARGUMENT,
                    f"input \"{key}\" must have shape {spec.shape.as_list()} (None: any size), got {list(shapes[key])}",
                )
            rows.add(shapes[key][0] if shapes[key] else None)
        if len(rows) > 1:
            raise ServingError(StatusCode.INVALID_ARGUMENT, f"inputs have different batch sizes: {sorted(rows)}")
        if rows == {0}:
            raise ServingError(StatusCode.INVALID_ARGUMENT, "empty batch: the inputs have 0 rows")

    def run(
        self, signature_name: str, inputs: Dict[str, np.ndarray], output_filter=(), checked: bool = False,
        warm_up: bool = False,
    ) -> Dict[str, np.ndarray]:
        """Runs one request; returns its outputs (those in `output_filter`, if given).

        The inputs are checked first unless the caller already did (`checked`).
        A `warm_up` run is left out of the metrics.
        """
        if not checked:
            self.check_inputs(
                signature_name,
                {k: tf.as_dtype(v.dtype) if v.dtype != object else tf.string for k, v in inputs.items()},
                {k: v.shape for k, v in inputs.items()},
            )
        unknown = sorted(set(output_filter) - set(self.outputs[signature_name]))
        if unknown:
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"output_filter names unknown output(s) {unknown}; signature \"{signature_name}\" has "
                f"{sorted(self.outputs[signature_name])}",
            )
        started = time.monotonic()
        outputs = self.runners[signature_name](inputs)
        if self.metrics is not None and not warm_up:
            self.metrics.record_run(self.name, signature_name, started)
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        return outputs

    def warm_up(self) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests`; returns how many requests ran."""
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            entry = prediction_log_pb2.PredictionLog.FromString(record)
            if entry.WhichOneof("log_type") != "predict_log":
                continue
            request = entry.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            self.run(request.model_spec.signature_name or DEFAULT_SIGNATURE, inputs, warm_up=True)
            count += 1
        return count

    @contextlib.contextmanager
    def hold(self):
        with self._idle:
            self._in_flight += 1
        try:
            yield self
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self):
        with self._idle:
            while self._in_flight:
                self._idle.wait()

    def close(self):
        for runner in self.runners.values():
            if isinstance(runner, Batcher):
                runner.close()
        self.runners = {}
        self.module = self.signatures = None


def versions_on_disk(base_path: str) -> List[int]:
    """Integer-named subdirectories holding a saved_model.pb, ascending.

    Exports in progress (our exporter writes `.tmp-*` and renames) are not integers and are never seen.
    A version is an int64, as in TensorFlow Serving, written without leading zeros (so that
    `str(version)` is its directory); other names are skipped.
    """
    if not os.path.isdir(base_path):
        return []
    found = []
    for name in os.listdir(base_path):
        if is_version_name(name) and os.path.isfile(os.path.join(base_path, name, "saved_model.pb")):
            found.append(int(name))
    return sorted(found)


def is_version_name(name: str) -> bool:
    """ASCII digits, no leading zero, below 2**63."""
    return re.fullmatch(r"0|[1-9][0-9]{0,18}", name) is not None and int(name) < 2**63


class ModelManager:
    """Serves the latest version under `base_path` and follows the directory.

    TensorFlow Serving's default version policy (`latest { num_versions: 1 }`,
    availability preserving): the servable version is the largest on disk. A
    new one is loaded and warmed up while the old one serves, then replaces
    it. Deleting the served version makes the next largest the servable one
    (a rollback), and deleting every version stops serving the model. A load
    that fails is retried `max_num_load_retries` times, `load_retry_interval`
    seconds apart (so a version copied into place file by file loads once
    complete); the version serving meanwhile goes on serving. One difference:
    when the newest version fails every retry, the newest one that has not
    failed is served (TensorFlow Serving would keep the current one), so a
    deletion past a broken version still rolls back.

    Args:
        name: the model name requests use.
        base_path: directory of integer version subdirectories.
        poll_seconds: how often to look at the directory; 0 looks only at start.
        batching: `BatchingParameters`, or None for no batching.
        max_num_load_retries: retries after a failed load (TensorFlow Serving's
            `--max_num_load_retries`, default 5).
        load_retry_interval: seconds between them (`--load_retry_interval_micros`
            / 1e6, default 60).
        metrics: a `serving.metrics.ServingMetrics` that times each signature's runs, or None.
    """

    def __init__(self, name: str, base_path: str, poll_seconds: float = 1.0, batching=None,
                 max_num_load_retries: int = 5, load_retry_interval: float = 60.0, metrics=None):
        self.name = name
        self.metrics = metrics
        self.base_path = base_path
        self.poll_seconds = poll_seconds
        self.batching = batching
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval = load_retry_interval
        self._lock = threading.Lock()
        self._current: Optional[LoadedVersion] = None
        self._status: Dict[int, tuple] = {}  # version -> (state, error message)
        self._failed: Dict[int, tuple] = {}  # version -> (failed attempts, monotonic time of the next try)
        self._stop = threading.Event()
        self._poller = None

    def poll(self) -> Optional[int]:
        """Brings the served version in line with the directory; returns a newly served version."""
        versions = versions_on_disk(self.base_path)
        with self._lock:
            current = self._current
        # A version removed from disk starts afresh if it comes back (as a new
        # load in TensorFlow Serving).
        self._failed = {v: failed for v, failed in self._failed.items() if v in versions}
        # The newest version not given up on (a version that failed every
        # retry does not block a rollback past it).
        loadable = [v for v in versions if self._failed.get(v, (0, 0.0))[0] <= self.max_num_load_retries]
        deleted = current is not None and current.version not in versions
        if not loadable:
            if deleted:
                self._retire(current, "it was deleted and no other version loads")
            return None
        target = loadable[-1]
        if current is not None and not deleted and target <= current.version:
            return None
        if time.monotonic() < self._failed.get(target, (0, 0.0))[1]:
            return None  # not yet time to retry
        with self._lock:
            self._status[target] = (LOADING, "")
        log.info("loading %s version %d from %s", self.name, target, self.base_path)
        loaded = None
        try:
            loaded = LoadedVersion(self.name, target, os.path.join(self.base_path, str(target)), self.batching,
                                   self.metrics)
            warmed = loaded.warm_up()
        except Exception as error:
            # Reported; the version serving now goes on serving.
            if loaded is not None:
                loaded.close()  # its batch threads would keep it in memory
            attempts = self._failed.get(target, (0, 0.0))[0] + 1
            final = attempts > self.max_num_load_retries
            self._failed[target] = (attempts, time.monotonic() + max(self.load_retry_interval, 0.0))
            log.error("%s version %d failed to load (attempt %d of %d): %s", self.name, target, attempts,
                      self.max_num_load_retries + 1, error)
            with self._lock:
                self._status[target] = (END if final else LOADING, f"failed to load: {_short(str(error))}")
            return None
        self._failed.pop(target, None)
        with self._lock:
            stopped = self._stop.is_set()
            if stopped:  # stop() ran during the load: nothing is served after it
                self._status[target] = (END, "")
            else:
                old, self._current = self._current, loaded
                self._status[target] = (AVAILABLE, "")
                if old is not None:
                    self._status[old.version] = (UNLOADING, "")
        if stopped:
            loaded.close()
            return None
        log.info("serving %s version %d (%d warm-up requests)", self.name, target, warmed)
        if old is not None:
            threading.Thread(target=self._unload, args=(old,), daemon=True).start()
        return target

    def _retire(self, current: "LoadedVersion", why: str):
        with self._lock:
            if self._current is not current:
                return
            self._current = None
            self._status[current.version] = (UNLOADING, "")
        log.info("stopped serving %s version %d: %s", self.name, current.version, why)
        threading.Thread(target=self._unload, args=(current,), daemon=True).start()

    def _unload(self, old: LoadedVersion):
        old.wait_idle()  # requests already holding it finish first
        old.close()
        with self._lock:
            if self._status.get(old.version, (None,))[0] == UNLOADING:  # not being loaded again meanwhile
                self._status[old.version] = (END, "")
        log.info("unloaded %s version %d", self.name, old.version)

    def start(self):
        """Loads the servable version before returning, as TensorFlow Serving does
        before it opens its ports: a version on disk that fails to load is
        retried (`max_num_load_retries`), whatever `poll_seconds` is.

        Raises:
            RuntimeError: versions are on disk and none became available.
        """
        self.poll()
        while self._current is None and not self._stop.is_set():
            loadable = [v for v in versions_on_disk(self.base_path)
                        if self._failed.get(v, (0, 0.0))[0] <= self.max_num_load_retries]
            if not loadable:
                break
            self._stop.wait(max(0.0, self._failed.get(loadable[-1], (0, 0.0))[1] - time.monotonic()))
            self.poll()
        if self._stop.is_set():
            raise RuntimeError(f"model {self.name!r}: stopped while it loaded")
        if self._current is None and versions_on_disk(self.base_path):
            reasons = "; ".join(f"version {v}: {e}" for v, (_, e) in sorted(self._status.items()) if e)
            raise RuntimeError(f"model {self.name!r}: no version became available ({reasons})")
        if self.poll_seconds > 0:
            with self._lock:  # not after stop(), which joins the poller
                if not self._stop.is_set():
                    self._poller = threading.Thread(target=self._poll_loop, name="poll", daemon=True)
                    self._poller.start()

    def _poll_loop(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # the server keeps serving what it has
                log.exception("polling %s failed", self.base_path)

    def stop(self):
        """Stops polling (a load under way finishes, and is closed), then
        unloads the served version once its requests are done."""
        with self._lock:
            self._stop.set()
            poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join()
        with self._lock:
            current, self._current = self._current, None
        if current is not None:
            current.wait_idle()
            current.close()

    @contextlib.contextmanager
    def serve(self, model_name: str, version: Optional[int] = None):
        """Holds the requested version (latest when None) for one request."""
        if model_name != self.name:
            raise ServingError(StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_name})")
        with self._lock:
            current = self._current
            if current is None:
                # As TensorFlow Serving answers for a model with no available version.
                raise ServingError(StatusCode.NOT_FOUND, f"Servable not found for request: Latest({self.name})")
            if version is not None and version != current.version:
                raise ServingError(
                    StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({self.name}, {version}); "
                    f"serving version {current.version}",
                )
            held = current.hold()
            held.__enter__()
        try:
            yield current
        finally:
            held.__exit__(None, None, None)

    def status(self, model_name: str, version: Optional[int] = None) -> List[tuple]:
        """[(version, state, error message)] for every version seen, newest first."""
        if model_name != self.name:
            raise ServingError(StatusCode.NOT_FOUND, f"Could not find any versions of model {model_name}")
        with self._lock:
            rows = sorted(((v, s, e) for v, (s, e) in self._status.items()), reverse=True)
        if version is not None:
            rows = [row for row in rows if row[0] == version]
            if not rows:
                raise ServingError(StatusCode.NOT_FOUND, f"Could not find version {version} of model {model_name}")
        return rows
