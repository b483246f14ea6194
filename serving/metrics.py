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

Beyond TensorFlow Serving (tensorflow/serving#1959 asks for it):

- `:keras_transformer:serving:signature_latency{model_name, signature_name}`:
  the time of each signature's successful runs, batching queue included, in
  the same buckets.

Differences: `request_count` is typed `untyped`, where TensorFlow Serving
says `counter` (prometheus-client writes a counter's samples as `NAME_total`;
the name is what queries and dashboards use, so the name is kept); requests
for a model the server does not serve are counted under `model_name=""`; no
`_created` series (turned off). TensorFlow Serving's `runtime_latency` and
batching metrics are not exported yet.
"""

import threading
import time
from typing import Dict, Optional, Tuple

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client.core import Metric

from serving.protos import parse_text

prometheus_client.disable_created_metrics()  # TensorFlow Serving writes no `_created` series

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# monitoring::Buckets::Exponential(10, 1.8, 33): "(~20 minutes)" in microseconds, to the six
# significant digits TensorFlow Serving writes them with (le="32.4", not 32.400000000000006).
LATENCY_BUCKETS_MICROS = tuple(float(f"{10.0 * 1.8**i:.6g}") for i in range(33))


class ServingMetrics:
    """The server's metrics, in a registry of their own (one per server).

    Args:
        known_model: `fn(name) -> bool`, whether the server serves a model of
            that name. Requests for other names are counted under
            `model_name=""`: a client could otherwise add a label value, and
            memory, with every name it makes up (TensorFlow Serving keeps
            each name).
    """

    def __init__(self, known_model=lambda name: True):
        self.known_model = known_model
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str], int] = {}
        self.registry.register(self)
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"], buckets=LATENCY_BUCKETS_MICROS, registry=self.registry,
        )
        self.signature_latency = Histogram(
            ":keras_transformer:serving:signature_latency",
            "Distribution of wall time (in microseconds) of a signature's runs, batching queue included.",
            ["model_name", "signature_name"], buckets=LATENCY_BUCKETS_MICROS, registry=self.registry,
        )

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, started: float):
        """One request that began at `started` (`time.monotonic()`) and ended now with `status`."""
        if not self.known_model(model_name):
            model_name = ""
        with self._lock:
            key = (model_name, status)
            self._counts[key] = self._counts.get(key, 0) + 1
        if status == "OK":
            self.request_latency.labels(model_name, api, entrypoint).observe((time.monotonic() - started) * 1e6)

    def record_run(self, model_name: str, signature_name: str, started: float):
        self.signature_latency.labels(model_name, signature_name).observe((time.monotonic() - started) * 1e6)

    def collect(self):
        """The request counts (prometheus-client's collector protocol)."""
        family = Metric(":tensorflow:serving:request_count", "The total number of requests.", "unknown")
        with self._lock:
            counts = list(self._counts.items())
        counts.sort()
        for (model_name, status), count in counts:
            family.add_sample(family.name, {"model_name": model_name, "status": status}, count)
        yield family

    def describe(self):
        return [Metric(":tensorflow:serving:request_count", "The total number of requests.", "unknown")]

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
    path = prometheus.path or DEFAULT_PATH
    if not path.startswith("/") or path.startswith("//") or "?" in path or "#" in path:
        # (TensorFlow Serving starts with such a path, and never serves it.)
        raise ValueError(
            f'MonitoringConfig: prometheus_config.path must be a URL path starting with one "/" (no query). '
            f"Received: {path!r}"
        )
    return path
