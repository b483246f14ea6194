"""Prometheus metrics under TensorFlow Serving's names (--monitoring_config_file).

`tensorflow_model_server` exports its monitoring metrics as Prometheus text on
the REST port when a `MonitoringConfig` with `prometheus_config { enable: true }`
is given (model_servers/http_server.cc), at `/monitoring/prometheus/metrics`
unless the config names another path (util/prometheus_exporter.cc). A metric
`/tensorflow/serving/request_count` becomes `:tensorflow:serving:request_count`
there (every character outside [a-zA-Z0-9_] turns into ':'). This module keeps
those names, so dashboards and alerts written for TensorFlow Serving read this
server unchanged:

- `:tensorflow:serving:request_count{model_name, status}`: every request, by
  its gRPC status name ("OK", "INVALID_ARGUMENT", ...), as
  `RecordModelRequestCount` (servables/tensorflow/util.cc) counts them: gRPC
  Predict, Classify and Regress, and every REST request (status and metadata
  GETs included).
- `:tensorflow:serving:request_latency{model_name, API, entrypoint}`: wall
  time in microseconds of the requests that succeeded (`RecordRequestLatency`),
  API "Predict"/"Classify"/"Regress" over gRPC and the REST method
  ("predict", ...; "" for a GET) with entrypoint "GRPC" or "REST", in
  TensorFlow Serving's buckets (10 us x 1.8^i, 33 of them).

Beyond TensorFlow Serving (tensorflow/serving#1959 asks for it):

- `:keras_transformer:serving:signature_latency{model_name, signature_name}`:
  the time of each signature's successful runs, batching queue included, in
  the same buckets.

One difference: `request_count` is typed `untyped`, where TensorFlow Serving
says `counter`. prometheus-client writes a counter's samples as `NAME_total`;
the name is what queries and dashboards use, so the name is kept.
"""

import threading
import time
from typing import Dict, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client.core import Metric

from serving.protos import parse_text

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# monitoring::Buckets::Exponential(10, 1.8, 33): "(~20 minutes)" in microseconds.
LATENCY_BUCKETS_MICROS = tuple(10.0 * 1.8**i for i in range(33))


class ServingMetrics:
    """The server's metrics, in a registry of their own (one per server)."""

    def __init__(self):
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
            counts = sorted(self._counts.items())
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
    if not path.startswith("/"):
        raise ValueError(f'MonitoringConfig: prometheus_config.path must start with "/". Received: {path!r}')
    return path
