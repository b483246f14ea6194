"""Versions of a SavedModel on disk, loaded, served and swapped like TensorFlow Serving does.

`ModelManager` watches a model base path (`base/1/`, `base/2/`, ...), serves
the latest version, loads a newer one when it appears (warm-up included)
and unloads the old one once the requests that hold it have finished.
`LoadedVersion` checks each request against the signature it names and runs
it, through a `Batcher` where batching is on.
"""

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from serving import request_log
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
        self.batching = batching
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
                # Every signature whose tensors are all batch-major. TensorFlow Serving
                # batches every signature: a request with a scalar input is refused
                # under batching whatever its signature (check_inputs), as there; the
                # signatures left out here run unbatched, where it would batch them.
                specs = list(self.inputs[key].values()) + list(self.outputs[key].values())
                if all(spec.shape.rank and spec.shape[0] is None for spec in specs):
                    self.runners[key] = Batcher(self.runners[key], batching, name=f"{name}/{version}/{key}",
                                                metrics=metrics)
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
        if self.batching is not None and any(not shapes[key] for key in specs):
            # Under batching, every request passes the batching session's size check
            # (batching_session.cc, ComputeInputSize; batching_util.h, ComputeTensorBatchSize).
            raise ServingError(StatusCode.INVALID_ARGUMENT,
                               "Batching Run() input tensors must have at least one dimension")
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
            if shapes[key]:  # a scalar has no batch dimension
                rows.add(shapes[key][0])
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
        rows = next((np.shape(v)[0] for v in inputs.values() if np.ndim(v)), None)
        if not warm_up:
            request_log.note(version=self.version, signature=signature_name, batch_size=rows, inputs=inputs)
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
    try:
        return _list_versions(base_path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _list_versions(base_path: str) -> List[int]:
    """`versions_on_disk`, raising FileNotFoundError or NotADirectoryError when `base_path` is not a directory."""
    found = []
    for name in os.listdir(base_path):
        if is_version_name(name) and os.path.isfile(os.path.join(base_path, name, "saved_model.pb")):
            found.append(int(name))
    return sorted(found)


def is_version_name(name: str) -> bool:
    """ASCII digits, no leading zero, below 2**63."""
    return re.fullmatch(r"0|[1-9][0-9]{0,18}", name) is not None and int(name) < 2**63


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk to serve: TensorFlow Serving's `ServableVersionPolicy`
    (config/file_system_storage_path_source.proto).

    kind "latest": the `num_versions` largest; "all": every one; "specific":
    those in `versions` that are on disk.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: Tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f'a version policy is "latest", "all" or "specific". Received: {self.kind!r}')
        if self.kind == "latest" and (isinstance(self.num_versions, bool) or not isinstance(self.num_versions, int)
                                      or self.num_versions < 1):
            raise ValueError(f"latest {{ num_versions }} must be at least 1. Received: {self.num_versions!r}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("specific { versions } names no version")

    def select(self, versions: List[int]) -> List[int]:
        """The versions to serve out of `versions` (ascending)."""
        if self.kind == "latest":
            return versions[-self.num_versions:]
        if self.kind == "specific":
            return [v for v in versions if v in self.versions]
        return list(versions)


class ModelManager:
    """Serves the versions of one model under `base_path` that its version
    policy names, and follows the directory.

    TensorFlow Serving's availability-preserving policy: a new version is
    loaded and warmed up while the old ones serve, and only then replaces
    them; a request without a version gets the largest available one. The
    default policy (`latest { num_versions: 1 }`) serves the largest version
    on disk: deleting it makes the next largest the servable one (a
    rollback), and deleting every version stops serving the model. A load
    that fails is retried `max_num_load_retries` times, `load_retry_interval`
    seconds apart (so a version copied into place file by file loads once
    complete); the versions serving meanwhile go on serving. One difference:
    a version that failed every retry is passed over, so the policy serves
    the next newest one (TensorFlow Serving would keep the current one), and
    a deletion past a broken version still rolls back.

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
        policy: a `VersionPolicy` (default: the latest version).
        listener: called (without arguments, and holding no lock of this
            manager) each time a version starts or stops serving, or None.
    """

    def __init__(self, name: str, base_path: str, poll_seconds: float = 1.0, batching=None,
                 max_num_load_retries: int = 5, load_retry_interval: float = 60.0, metrics=None,
                 policy: Optional[VersionPolicy] = None, listener: Optional[Callable[[], None]] = None):
        self.name = name
        self.metrics = metrics
        self.base_path = base_path
        self.policy = policy or VersionPolicy()
        self.poll_seconds = poll_seconds
        self.batching = batching
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval = load_retry_interval
        self.listener = listener
        self.has_served = False  # a version has been available
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one poll at a time (the poller, a config reload)
        self._loaded: Dict[int, LoadedVersion] = {}
        self._status: Dict[int, tuple] = {}  # version -> (state, error message)
        self._failed: Dict[int, tuple] = {}  # version -> (failed attempts, monotonic time of the next try)
        self._stop = threading.Event()
        self._poller = None

    def loaded_versions(self) -> List[int]:
        """The versions serving now, ascending."""
        with self._lock:
            return sorted(self._loaded)

    def reconfigure(self, base_path: str, policy: VersionPolicy):
        """Follows a new base path or version policy from the next poll on (a
        config reload). Failed loads counted at another base path are forgotten:
        its directories are not the new one's."""
        with self._poll_lock:  # not while a poll reads or counts them
            with self._lock:
                if base_path != self.base_path:
                    self._failed = {}
                self.base_path, self.policy = base_path, policy

    def _loadable(self, versions):
        return [v for v in versions if self._failed.get(v, (0, 0.0))[0] <= self.max_num_load_retries]

    def poll(self) -> List[int]:
        """Brings the served versions in line with the directory and the
        policy; returns the versions newly served."""
        with self._poll_lock:
            return self._poll()

    def _poll(self) -> List[int]:
        with self._lock:
            base_path, policy = self.base_path, self.policy
        try:
            versions = _list_versions(base_path)  # (listed once: a path that vanishes after a check is caught too)
        except (FileNotFoundError, NotADirectoryError):
            # As TensorFlow Serving's file-system source: a base path that is not there fails the poll
            # and changes nothing (a file system that blinks); one that is there but empty unloads all.
            with self._lock:
                serving = sorted(self._loaded)
            log.error("could not find base path %s for %s; %s", base_path, self.name,
                      f"still serving version(s) {serving}" if serving else "nothing to serve")
            return []
        # A version removed from disk starts afresh if it comes back (as a new
        # load in TensorFlow Serving).
        self._failed = {v: failed for v, failed in self._failed.items() if v in versions}
        # Versions given up on are passed over (they do not block a rollback past them).
        aspired = policy.select(self._loadable(versions))
        added = []
        for version in sorted(aspired, reverse=True):  # the newest first: it is what requests ask for
            with self._lock:
                if version in self._loaded:
                    continue
            if self._stop.is_set():
                break
            if time.monotonic() < self._failed.get(version, (0, 0.0))[1]:
                continue  # not yet time to retry
            if self._load(base_path, version):
                added.append(version)
        # Again: a version that failed its last retry in this poll is passed over now.
        aspired = policy.select(self._loadable(versions))
        with self._lock:
            keep = {v for v in self._loaded if v in aspired}
            if not keep:
                # Availability preserving (availability_preserving_policy.cc): while
                # a version the policy names is still to load (loading, or to be
                # retried), the newest one serving goes on, on disk or not (a base
                # path changed, a version replaced); with none still to load, the
                # newest one serving that is still on disk.
                pending = [v for v in aspired if v not in self._loaded]
                survivors = [v for v in self._loaded if pending or v in versions]
                keep = {max(survivors)} if survivors else set()
            retired = [self._loaded.pop(v) for v in sorted(self._loaded) if v not in keep]
            for old in retired:
                self._status[old.version] = (UNLOADING, "")
        for old in retired:
            log.info("stopped serving %s version %d", self.name, old.version)
            threading.Thread(target=self._unload, args=(old,), daemon=True).start()
        if retired:
            self._changed()
        return added

    def _load(self, base_path: str, target: int) -> bool:
        with self._lock:
            self._status[target] = (LOADING, "")
        log.info("loading %s version %d from %s", self.name, target, base_path)
        loaded = None
        path = os.path.join(base_path, str(target))
        started = time.monotonic()
        try:
            loaded = LoadedVersion(self.name, target, path, self.batching, self.metrics)
            warmed = loaded.warm_up()
        except Exception as error:
            if self.metrics is not None:
                self.metrics.record_load(path, False, started)
            # Reported; the versions serving now go on serving.
            if loaded is not None:
                loaded.close()  # its batch threads would keep it in memory
            attempts = self._failed.get(target, (0, 0.0))[0] + 1
            final = attempts > self.max_num_load_retries
            self._failed[target] = (attempts, time.monotonic() + max(self.load_retry_interval, 0.0))
            log.error("%s version %d failed to load (attempt %d of %d): %s", self.name, target, attempts,
                      self.max_num_load_retries + 1, error)
            with self._lock:
                self._status[target] = (END if final else LOADING, f"failed to load: {_short(str(error))}")
            return False
        self._failed.pop(target, None)
        if self.metrics is not None:
            self.metrics.record_load(path, True, started)
        with self._lock:
            stopped = self._stop.is_set()
            if stopped:  # stop() ran during the load: nothing is served after it
                self._status[target] = (END, "")
            else:
                self._loaded[target] = loaded
                self._status[target] = (AVAILABLE, "")
                self.has_served = True
        if stopped:
            loaded.close()
            return False
        log.info("serving %s version %d (%d warm-up requests)", self.name, target, warmed)
        self._changed()
        return True

    def _changed(self):
        if self.listener is not None:
            self.listener()

    def _unload(self, old: LoadedVersion):
        old.wait_idle()  # requests already holding it finish first
        old.close()
        with self._lock:
            if self._status.get(old.version, (None,))[0] == UNLOADING:  # not being loaded again meanwhile
                self._status[old.version] = (END, "")
        log.info("unloaded %s version %d", self.name, old.version)

    def _pending(self) -> List[int]:
        """Versions the policy names that are not loaded and may still load."""
        with self._lock:
            base_path, policy, loaded = self.base_path, self.policy, set(self._loaded)
        return [v for v in policy.select(self._loadable(versions_on_disk(base_path))) if v not in loaded]

    def start(self, wait_for_a_version: bool = True):
        """Loads the versions the policy names before returning, as TensorFlow
        Serving does before it opens its ports: a version on disk that fails
        to load is retried (`max_num_load_retries`), whatever `poll_seconds` is;
        with `wait_for_a_version`, a base path with no version is looked at
        every `poll_seconds` until one appears (server_core.cc waits for every
        model at the start).

        Raises:
            RuntimeError: versions are on disk and none became available; or,
                waiting for a version, there is none and `poll_seconds` (0)
                never looks again (TensorFlow Serving would wait for ever).
        """
        self.poll()
        told = False
        while not self._stop.is_set():
            pending = self._pending()
            if pending:
                self._stop.wait(max(0.0, min(self._failed.get(v, (0, 0.0))[1] for v in pending) - time.monotonic()))
            elif wait_for_a_version and not self.loaded_versions() and not versions_on_disk(self.base_path):
                if self.poll_seconds <= 0:
                    raise RuntimeError(f"model {self.name!r}: no version found under base path {self.base_path}, "
                                       f"and file_system_poll_wait_seconds={self.poll_seconds} never looks again")
                if not told:  # as file_system_storage_path_source.cc says it
                    log.warning("No versions of servable %s found under base path %s. Did you forget to name your "
                                "leaf directory as a number (eg. '/1/')?", self.name, self.base_path)
                    told = True
                self._stop.wait(self.poll_seconds)
            else:
                break
            self.poll()
        if self._stop.is_set():
            raise RuntimeError(f"model {self.name!r}: stopped while it loaded")
        if not self.loaded_versions() and versions_on_disk(self.base_path):
            with self._lock:
                reasons = "; ".join(f"version {v}: {e}" for v, (_, e) in sorted(self._status.items()) if e)
            raise RuntimeError(f"model {self.name!r}: no version became available ({reasons})")
        self.start_polling()

    def start_polling(self):
        """Looks at the directory every `poll_seconds` from now on (when above 0)."""
        if self.poll_seconds > 0:
            with self._lock:  # not after stop(), which joins the poller
                if not self._stop.is_set() and self._poller is None:
                    self._poller = threading.Thread(target=self._poll_loop, name=f"poll-{self.name}", daemon=True)
                    self._poller.start()

    def _poll_loop(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # the server keeps serving what it has
                log.exception("polling %s failed", self.base_path)

    def stop(self):
        """Stops polling (a load under way finishes, and is closed), then
        unloads the served versions once their requests are done."""
        with self._lock:
            self._stop.set()
            poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join()
        with self._lock:
            loaded, self._loaded = list(self._loaded.values()), {}
            for old in loaded:
                self._status[old.version] = (UNLOADING, "")
        if loaded:
            self._changed()
        for old in loaded:
            old.wait_idle()
            old.close()
            with self._lock:
                self._status[old.version] = (END, "")

    @contextlib.contextmanager
    def serve(self, version: Optional[int] = None):
        """Holds the requested version (the largest available when None) for one request."""
        with self._lock:
            if not self._loaded:
                # As TensorFlow Serving answers for a model with no available version
                # (core/basic_manager.cc; the request as manager.h's ServableRequest::DebugString).
                what = f"Latest({self.name})" if version is None else f"Specific({self.name}, {version})"
                raise ServingError(StatusCode.NOT_FOUND, f"Servable not found for request: {what}")
            if version is None:
                current = self._loaded[max(self._loaded)]
            elif version in self._loaded:
                current = self._loaded[version]
            else:
                raise ServingError(
                    StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({self.name}, {version}); "
                    f"serving version(s) {', '.join(map(str, sorted(self._loaded)))}",
                )
            held = current.hold()
            held.__enter__()
        try:
            yield current
        finally:
            held.__exit__(None, None, None)

    def states(self) -> List[tuple]:
        """[(version, state, error message)] for every version seen, newest first."""
        with self._lock:
            return sorted(((v, s, e) for v, (s, e) in self._status.items()), reverse=True)

    def status(self, version: Optional[int] = None) -> List[tuple]:
        """[(version, state, error message)] for every version seen (or `version`), newest first."""
        # As get_model_status_impl.cc answers: NOT_FOUND for a version, or a model, with no state.
        rows = [row for row in self.states() if version is None or row[0] == version]
        if not rows and version is not None:
            raise ServingError(StatusCode.NOT_FOUND, f"Could not find version {version} of model {self.name}")
        if not rows:
            raise ServingError(StatusCode.NOT_FOUND, f"Could not find any versions of model {self.name}")
        return rows
