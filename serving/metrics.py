"""Prometheus metrics under TensorFlow Serving's names (--monitoring_config_file).

`tensorflow_model_server` exports its monitoring metrics as Prometheus text on
the REST port when a `MonitoringConfig` with `prometheus_config { enable: true }`
is given (model_servers/http_server.cc), at `/monitoring/prometheus/metrics`
unless the config names another path (util/prometheus_exporter.cc). A metric
`/tensorflow/serving/request_count` becomes `:tensorflow:serving:request_count`
there (every character outside [a-zA-Z0-9_] turns into ':'). This module keeps
those names, labels, units and buckets, so queries written for TensorFlow
Serving's metrics work here (the differences are listed below):

- `:tensorflow:serving:request_count{model_name, status}`: every request, by
  its gRPC status name ("OK", "INVALID_ARGUMENT", ...), as
  `RecordModelRequestCount` (servables/tensorflow/util.cc) counts them: gRPC
  Predict (Classify and Regress are UNIMPLEMENTED here, and not counted), and
  every REST request to a path under /v1/ (status and metadata GETs included),
  as TensorFlow Serving's REST handler takes only those.
- `:tensorflow:serving:request_latency{model_name, API, entrypoint}`: wall
  time in microseconds of the requests that succeeded (`RecordRequestLatency`),
  API "Predict"/"Classify"/"Regress" over gRPC and the REST method
  ("predict", ...; "" for a GET) with entrypoint "GRPC" or "REST", in
  TensorFlow Serving's buckets (10 us x 1.8^i, 33 of them).
- `:tensorflow:serving:batching_session:input_batch_size`,
  `processed_batch_size`, `padding_size{execution_batch_size}` and
  `queuing_latency{thread_pool_name}` (batching/batching_util.h,
  batching_session.cc), with batching on: each request's rows (TensorFlow
  Serving counts them once per input tensor; here once per request), the
  size each batch ran at (allowed_batch_sizes padding included), the rows of
  padding, and each request's wait in the queue, in microseconds.
- `:tensorflow:cc:saved_model:load_attempt_count{model_path, status}` ("success"
  or "fail") and `load_latency{model_path}` (cumulative microseconds of the
  successful loads), as TensorFlow's SavedModel loader counts them
  (tensorflow/cc/saved_model/loader.cc), warm-up included here.

Beyond TensorFlow Serving (tensorflow/serving#1959 asks for the first):

- `:keras_transformer:serving:signature_latency{model_name, signature_name}`:
  the time of each signature's successful runs, batching queue included, in
  the request latency's buckets.
- `:keras_transformer:serving:available_versions{model_name}`: how many
  versions of each configured model are available (0: the model answers
  NOT_FOUND), a gauge to alert on.

Differences: `request_count` is typed `untyped`, where TensorFlow Serving
says `counter` (prometheus-client writes a counter's samples as `NAME_total`;
the name is what queries and dashboards use, so the name is kept); requests
for a model the server does not serve are counted under `model_name=""`; a
histogram's `_sum` is written in full, where TensorFlow Serving rounds it to
six significant digits. prometheus-client writes the text; the histograms are
this module's collectors, which write their bounds as TensorFlow Serving
does (le="10", not "10.0") and no `_created` series. TensorFlow Serving's
`runtime_latency` is not exported.
"""

import bisect
import threading
import time
from typing import Dict, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client.core import Metric

from serving.protos import parse_text

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# monitoring::Buckets::Exponential(10, 1.8, 33): "(~20 minutes)" in microseconds, to the six
# significant digits TensorFlow Serving writes them with (le="32.4", not 32.400000000000006).
LATENCY_BUCKETS_MICROS = tuple(float(f"{10.0 * 1.8**i:.6g}") for i in range(33))
# Buckets::Exponential(1, 2, 14): batch sizes 1 to 8192; Exponential(100, 1.2, 52): queuing, 100 us to ~1 s.
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(14))
QUEUING_BUCKETS_MICROS = tuple(float(f"{100.0 * 1.2**i:.6g}") for i in range(52))


class _Histogram:
    """A histogram written as TensorFlow Serving writes one (util/prometheus_exporter.cc):
    each bound with absl::StrCat's six significant digits (le="10", le="32.4",
    le="1.46977e+08"; prometheus-client's Histogram writes le="10.0"), then
    le="+Inf", `_sum` and `_count`, and no `_created` series. A bucket holds
    the values up to its bound, as Prometheus reads `le`."""

    def __init__(self, name: str, documentation: str, labelnames, buckets):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(buckets)
        self._les = [f"{b:.6g}" for b in self.bounds] + ["+Inf"]
        self._lock = threading.Lock()
        self._series: Dict[tuple, list] = {}  # labels -> [counts per bucket..., sum]

    def observe(self, labels: tuple, value: float):
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [0] * (len(self.bounds) + 1) + [0.0]
            series[index] += 1
            series[-1] += value

    def metric(self) -> Metric:
        family = Metric(self.name, self.documentation, "histogram")
        with self._lock:
            series = sorted((labels, list(values)) for labels, values in self._series.items())
        for labels, values in series:
            names = dict(zip(self.labelnames, labels))
            cumulative = 0
            for le, count in zip(self._les, values[:-1]):
                cumulative += count
                family.add_sample(self.name + "_bucket", {**names, "le": le}, cumulative)
            family.add_sample(self.name + "_sum", names, values[-1])
            family.add_sample(self.name + "_count", names, cumulative)
        return family


class ServingMetrics:
    """The server's metrics, in a registry of their own (one per server).

    Args:
        known_model: `fn(name) -> bool`, whether the server serves a model of
            that name. Requests for other names are counted under
            `model_name=""`: a client could otherwise add a label value, and
            memory, with every name it makes up (TensorFlow Serving keeps
            each name).
    """

    def __init__(self, known_model=lambda name: True, available_versions=None):
        self.known_model = known_model
        self.available_versions = available_versions  # fn() -> {model name: [versions]}, or None
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str], int] = {}
        self.request_latency = _Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"], LATENCY_BUCKETS_MICROS,
        )
        self.signature_latency = _Histogram(
            ":keras_transformer:serving:signature_latency",
            "Distribution of wall time (in microseconds) of a signature's runs, batching queue included.",
            ["model_name", "signature_name"], LATENCY_BUCKETS_MICROS,
        )
        # TensorFlow Serving's batching metrics (batching/batching_util.h, batching_session.cc).
        self.input_batch_size = _Histogram(
            ":tensorflow:serving:batching_session:input_batch_size",
            "Tracks the batch size distribution on the inputs.", [], BATCH_SIZE_BUCKETS)
        self.processed_batch_size = _Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing.", [], BATCH_SIZE_BUCKETS)
        self.padding_size = _Histogram(
            ":tensorflow:serving:batching_session:padding_size",
            "Tracks the padding size distribution on batches.", ["execution_batch_size"], BATCH_SIZE_BUCKETS)
        self.queuing_latency = _Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing", ["thread_pool_name"],
            QUEUING_BUCKETS_MICROS)
        # TensorFlow's SavedModel loader's counters (tensorflow/cc/saved_model/loader.cc).
        self._load_attempts: Dict[Tuple[str, str], int] = {}
        self._load_latency: Dict[str, float] = {}
        self.registry.register(self)

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, started: float):
        """One request that began at `started` (`time.monotonic()`) and ended now with `status`."""
        if not self.known_model(model_name):
            model_name = ""
        with self._lock:
            key = (model_name, status)
            self._counts[key] = self._counts.get(key, 0) + 1
        if status == "OK":
            self.request_latency.observe((model_name, api, entrypoint), (time.monotonic() - started) * 1e6)

    def record_batch(self, task_rows, total: int, padded: int, thread_pool_name: str, arrivals, started: float):
        """One batch run: its requests' rows, their sum, the size it ran at, and
        when each request arrived (`time.monotonic()`) and the batch started."""
        for rows in task_rows:
            self.input_batch_size.observe((), rows)
        self.processed_batch_size.observe((), padded)
        self.padding_size.observe((str(padded),), padded - total)
        for arrived in arrivals:
            self.queuing_latency.observe((thread_pool_name,), (started - arrived) * 1e6)

    def record_load(self, model_path: str, ok: bool, started: float):
        """One attempt to load the SavedModel at `model_path`, begun at `started`."""
        with self._lock:
            key = (model_path, "success" if ok else "fail")
            self._load_attempts[key] = self._load_attempts.get(key, 0) + 1
            if ok:
                self._load_latency[model_path] = (self._load_latency.get(model_path, 0.0)
                                                  + (time.monotonic() - started) * 1e6)

    def record_run(self, model_name: str, signature_name: str, started: float):
        self.signature_latency.observe((model_name, signature_name), (time.monotonic() - started) * 1e6)

    def collect(self):
        """Every metric (prometheus-client's collector protocol)."""
        family = Metric(":tensorflow:serving:request_count", "The total number of requests.", "unknown")
        with self._lock:
            counts = list(self._counts.items())
        counts.sort()
        for (model_name, status), count in counts:
            family.add_sample(family.name, {"model_name": model_name, "status": status}, count)
        yield family
        yield self.request_latency.metric()
        yield self.signature_latency.metric()
        for histogram in (self.input_batch_size, self.processed_batch_size, self.padding_size, self.queuing_latency):
            yield histogram.metric()
        attempts = Metric(":tensorflow:cc:saved_model:load_attempt_count",
                          "The number of times a SavedModel was successfully loaded.", "unknown")
        latency = Metric(":tensorflow:cc:saved_model:load_latency",
                         "Latency in microseconds for SavedModels that were successfully loaded.", "unknown")
        with self._lock:
            for (path, status), count in sorted(self._load_attempts.items()):
                attempts.add_sample(attempts.name, {"model_path": path, "status": status}, count)
            for path, micros in sorted(self._load_latency.items()):
                latency.add_sample(latency.name, {"model_path": path}, micros)
        yield attempts
        yield latency
        if self.available_versions is not None:
            available = Metric(":keras_transformer:serving:available_versions",
                               "The number of versions of a model that are available for inference.", "gauge")
            for name, versions in sorted(self.available_versions().items()):
                available.add_sample(available.name, {"model_name": name}, len(versions))
            yield available

    def describe(self):
        """The metric families' names (without their samples: nothing is asked of the server)."""
        names = [(":tensorflow:serving:request_count", "unknown"), (":tensorflow:cc:saved_model:load_attempt_count",
                 "unknown"), (":tensorflow:cc:saved_model:load_latency", "unknown")]
        names += [(h.name, "histogram") for h in (self.request_latency, self.signature_latency, self.input_batch_size,
                                                   self.processed_batch_size, self.padding_size, self.queuing_latency)]
        if self.available_versions is not None:
            names.append((":keras_transformer:serving:available_versions", "gauge"))
        return [Metric(name, "", kind) for name, kind in names]

    def exposition(self) -> bytes:
        """The metrics as Prometheus text."""
        return generate_latest(self.registry)


def parse_monitoring_config(text: str) -> Optional[str]:
    """The path a `MonitoringConfig` (protobuf text format, as in
    `--monitoring_config_file`) serves the metrics at, or None when they
    are off.

    Raises:
        ValueError: text that does not parse (line, column and field), or a
            path that does not start with "/".
    """
    prometheus = parse_text("MonitoringConfig", text, "MonitoringConfig").prometheus_config
    if not prometheus.enable:
        return None
    return check_metrics_path(prometheus.path or DEFAULT_PATH, "MonitoringConfig: prometheus_config.path")


def check_metrics_path(path, what: str = "`monitoring_path`") -> str:
    """`path` if the REST server can serve it (a URL path with one leading "/",
    no query or fragment); else ValueError naming `what`. (TensorFlow Serving
    starts with such a path, and never serves it.)"""
    if (not isinstance(path, str) or not path.startswith("/") or path.startswith("//") or "?" in path
            or "#" in path or any(c.isspace() for c in path)):
        raise ValueError(f'{what} must be a URL path starting with one "/" (no query). Received: {path!r}')
    return path
