"""A model server that speaks TensorFlow Serving's gRPC and REST APIs.

For development, tests and machines without Docker: the same flags, the same
`PredictionService` and `ModelService` gRPC API and the same REST endpoints as
`tensorflow_model_server`, so a client (ours, or any TensorFlow Serving client)
works against either unchanged.

    python -m serving.server --port=8500 --rest_api_port=8501 \\
        --model_name=transformer --model_base_path=$PWD/models/transformer \\
        --enable_batching --batching_parameters_file=serving/batching.config

This module holds the flags and `ModelServer`, which starts the parts together:
`servables.py` (versions on disk, loading, the version policy), `batching.py`,
`grpc_api.py` (PredictionService, ModelService), `rest_api.py` (routes and the
HTTP server), `json_tensor.py` (tensors as JSON) and `tls.py` (--ssl_config_file).
"""

import argparse
import dataclasses
import logging
import math
import numbers
import os
import signal
import sys
import threading
from concurrent import futures
from typing import Optional
from typing import Tuple

import grpc
from grpc_health.v1 import health
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

from serving.batching import BatchingParameters  # noqa: E402
from serving.batching import parse_batching_parameters  # noqa: E402
from serving.grpc_api import ModelService  # noqa: E402
from serving.grpc_api import PredictionService  # noqa: E402
from serving.grpc_api import parse_channel_arguments  # noqa: E402
from serving.metrics import ServingMetrics  # noqa: E402
from serving.metrics import check_metrics_path  # noqa: E402
from serving.metrics import parse_monitoring_config  # noqa: E402
from serving.request_log import RequestLog  # noqa: E402
from serving.rest_api import BoundedHTTPServer  # noqa: E402
from serving.rest_api import make_rest_handler  # noqa: E402
from serving.core import ModelConfig  # noqa: E402
from serving.core import ServerCore  # noqa: E402
from serving.core import parse_model_config  # noqa: E402
from serving.errors import ServingError  # noqa: E402
from serving.tls import parse_ssl_config  # noqa: E402

log = logging.getLogger("serving")

# The health service answers for the whole server ("") and for its two services, under the
# names TensorFlow Serving gives them (model_servers/server.cc, SetServingStatus).
_HEALTH_SERVICES = ("", "ModelService", "PredictionService")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What a `ModelServer` serves and how: the flags of `tensorflow_model_server` it implements.

    Args:
        model_name, model_base_path: the model and its directory of numbered versions
            (ignored when `models` or `model_config_file` is given, as in TensorFlow Serving).
        models: `serving.core.ModelConfig`s: several models, with version policies and labels.
        model_config_file: a `ModelServerConfig` file (read for `models` when they are not given).
        model_config_file_poll_wait_seconds: how often to read that file again and apply it (0: never).
        allow_version_labels_for_unavailable_models: a new label may name a version still to load.
        request_log_file: append one JSON line per request there (`serving.request_log`), or None.
        request_log_include_text: the lines hold the requests' text too (off: never written).
        port, rest_api_port: gRPC and REST ports (0 for gRPC: a free one; 0 for REST: no REST).
        batching: `BatchingParameters`, or None to run each request alone.
        file_system_poll_wait_seconds: how often to look for new versions (0: only at start).
        grpc_max_threads: gRPC worker threads.
        grpc_channel_arguments: (key, value) gRPC server options.
        max_body_bytes: the largest REST body accepted.
        ssl: a `parse_ssl_config` dict: gRPC over TLS.
        rest_api_timeout_seconds: the whole-request deadline of a REST request.
        rest_api_num_threads: REST connections handled at once.
        max_num_load_retries, load_retry_interval_seconds: retries of a failed version load.
        monitoring_path: the REST path of the Prometheus metrics (`serving.metrics`), or None for none.
        enable_grpc_healthcheck_service: serve gRPC's standard health service (grpc.health.v1.Health).
    """

    model_name: str = "default"
    model_base_path: Optional[str] = None
    port: int = 8500
    rest_api_port: int = 8501
    batching: Optional[BatchingParameters] = None
    file_system_poll_wait_seconds: float = 1.0
    grpc_max_threads: int = 64
    grpc_channel_arguments: Tuple[Tuple[str, object], ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    ssl: Optional[dict] = dataclasses.field(default=None, repr=False)  # holds the private key
    rest_api_timeout_seconds: float = 30.0
    rest_api_num_threads: int = 4 * (os.cpu_count() or 1)
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    monitoring_path: Optional[str] = None
    models: Optional[Tuple[ModelConfig, ...]] = None
    model_config_file: Optional[str] = None
    model_config_file_poll_wait_seconds: float = 0.0
    allow_version_labels_for_unavailable_models: bool = False
    request_log_file: Optional[str] = None
    request_log_include_text: bool = False
    enable_grpc_healthcheck_service: bool = False

    def __post_init__(self):
        # The same limits as the flags', so a config built in code cannot
        # start a server that hangs (no REST threads) or times out every request.
        if self.models is not None:
            if isinstance(self.models, (str, bytes)) or not all(isinstance(m, ModelConfig) for m in self.models):
                raise ValueError(f"`models` must be serving.core.ModelConfig objects. Received: {self.models!r}")
            object.__setattr__(self, "models", tuple(self.models))
        elif self.model_config_file is not None:
            if not isinstance(self.model_config_file, str) or not self.model_config_file:
                raise ValueError(f"`model_config_file` must be a path. Received: {self.model_config_file!r}")
        else:
            # As server.cc: "Both server_options.model_base_path and server_options.model_config_file are empty!"
            for name in ("model_name", "model_base_path"):
                if not isinstance(getattr(self, name), str) or not getattr(self, name):
                    raise ValueError(f"`{name}` must be a non-empty string (or give `models` or "
                                     f"`model_config_file`). Received: {name}={getattr(self, name)!r}")
        for name, low, high in (("port", 0, 65535), ("rest_api_port", 0, 65535), ("grpc_max_threads", 1, None),
                                ("max_body_bytes", 1, None), ("rest_api_num_threads", 1, None),
                                ("max_num_load_retries", 0, None)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
                    or (high is not None and value > high)):
                expected = f"an integer of at least {low}" + ("" if high is None else f" and at most {high}")
                raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
        if self.monitoring_path is not None:
            check_metrics_path(self.monitoring_path)  # the rule the config file's path follows
        # Negative poll and retry intervals are TensorFlow Serving's too
        # (model_servers/main.cc): no polling after the start, no wait between retries.
        for name, positive in (("rest_api_timeout_seconds", True), ("file_system_poll_wait_seconds", False),
                               ("load_retry_interval_seconds", False), ("model_config_file_poll_wait_seconds", False)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
                    or (positive and value <= 0)):
                expected = "a positive number of seconds" if positive else "a finite number of seconds"
                raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")


class ModelServer:
    """The gRPC server, the REST server and the model manager, started and stopped together."""

    def __init__(self, config: ServerConfig):
        c = self.config = config
        self.metrics = None
        if c.monitoring_path and not c.rest_api_port:
            log.warning("monitoring_path=%r: no REST port (rest_api_port=0), so no metrics are served",
                        c.monitoring_path)
        elif c.monitoring_path:
            self.metrics = ServingMetrics(known_model=lambda name: self.manager.knows(name),
                                          available_versions=lambda: self.manager.available_all())
        models = c.models
        if models is None and c.model_config_file:
            with open(c.model_config_file, encoding="utf-8") as f:
                models = parse_model_config(f.read(), c.model_config_file) or []
        elif models is None:
            models = [ModelConfig(c.model_name, os.path.abspath(c.model_base_path))]
        # Every model's versions, their labels and the requests that hold them (serving.core);
        # the health follows its versions as they change.
        self.manager = ServerCore(
            models, c.allow_version_labels_for_unavailable_models, on_change=self._update_health,
            poll_seconds=c.file_system_poll_wait_seconds, batching=c.batching,
            max_num_load_retries=c.max_num_load_retries, load_retry_interval=c.load_retry_interval_seconds,
            metrics=self.metrics,
        )
        self.request_log = None
        if c.request_log_file:
            try:
                self.request_log = RequestLog(c.request_log_file, c.request_log_include_text)
            except OSError as error:
                raise ValueError(f"--request_log_file={c.request_log_file}: {error}") from None
        self.health = health.HealthServicer() if c.enable_grpc_healthcheck_service else None
        self._health_lock = threading.Lock()
        self._health_now = None
        self._config_poller = None
        self.rest = None
        self.rest_api_port = None  # the REST port bound, when REST is on
        self._lock = threading.Lock()
        self._state = "new"  # then "starting", "serving"; "stopped" from any
        self._update_health()
        self._grpc_started = False  # the REST thread starts with gRPC
        self._start_done = threading.Event()
        self._stopping = threading.Event()
        # gRPC turns SO_REUSEPORT on by default, so a second server on a busy
        # port would share it silently; this one fails to bind instead.
        options = [("grpc.so_reuseport", 0), *c.grpc_channel_arguments]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=c.grpc_max_threads), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.manager, self.metrics, self.request_log), self.grpc
        )
        model_service = ModelService(self.manager, self.reload, self.request_log)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_service, self.grpc)
        if self.health is not None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        try:
            if c.ssl:
                credentials = grpc.ssl_server_credentials(
                    [(c.ssl["server_key"].encode(), c.ssl["server_cert"].encode())],
                    root_certificates=c.ssl["custom_ca"].encode() or None,
                    require_client_auth=c.ssl["client_verify"],
                )
                self.port = self.grpc.add_secure_port(f"0.0.0.0:{c.port}", credentials)
            else:
                self.port = self.grpc.add_insecure_port(f"0.0.0.0:{c.port}")
            if self.port == 0:
                raise OSError(f"cannot listen for gRPC on port {c.port}")
            if c.rest_api_port:
                handler = make_rest_handler(self.manager, c.max_body_bytes, c.rest_api_timeout_seconds,
                                            self.metrics, c.monitoring_path, self.request_log)
                self.rest = BoundedHTTPServer(("0.0.0.0", c.rest_api_port), handler, c.rest_api_num_threads)
                self.rest_api_port = self.rest.server_address[1]
        except BaseException:
            self._close()  # a port bound before the failure is not left behind
            raise

    def start(self):
        """Loads the models, then opens the ports; a failed start closes them again.
        A model with no version on disk is waited for until one appears, as in
        TensorFlow Serving.

        Raises:
            RuntimeError: a model has versions on disk and none loaded, or none
                and `file_system_poll_wait_seconds` is 0, or `stop` was called
                while the models loaded.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"a ModelServer starts once ({self._state}); make a new one")
            self._state = "starting"
        try:
            self.manager.start()  # the first version loads before the ports open, as in TensorFlow Serving
            with self._lock:
                if self._state != "starting":  # stop() was called while the model loaded
                    raise RuntimeError("the server was stopped while it started")
                self.grpc.start()
                self._grpc_started = True
                if self.rest is not None:
                    threading.Thread(target=self.rest.serve_forever, name="rest", daemon=True).start()
                self._state = "serving"
                self._update_health()
                self._start_config_poll()
        except BaseException:
            self._close()
            raise
        finally:
            self._start_done.set()
        print(f"Running gRPC ModelServer at 0.0.0.0:{self.port} ...", flush=True)
        if self.rest is not None:
            print(f"Exporting HTTP/REST API at:localhost:{self.rest_api_port} ...", flush=True)

    def _update_health(self):
        """SERVING while the server serves and its models are ready (`ServerCore.ready`).

        Called at each change (a version loaded or unloaded, a model removed, the
        start), from the thread that made it; the state is read and set under one
        lock, so an older reading never overwrites a newer one. Set only when it
        changes: each set writes to every Watch stream, under the servicer's lock.
        """
        if self.health is None:
            return
        with self._health_lock:
            serving = self._state == "serving" and self.manager.ready()
            if serving == self._health_now:
                return
            self._health_now = serving
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in _HEALTH_SERVICES:
                self.health.set(service, status)

    def _start_config_poll(self):
        c = self.config
        if c.model_config_file and c.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(target=self._poll_config, name="config-poll", daemon=True)
            self._config_poller.start()

    def _poll_config(self):
        """Reads `model_config_file` again every poll and applies what changed
        (server.cc, PollFilesystemAndReloadConfig); a file that does not parse,
        a config that fails a check (nothing changes) or a reload that fails
        otherwise is logged, and the next poll tries again."""
        path, wait = self.config.model_config_file, self.config.model_config_file_poll_wait_seconds
        while not self._stopping.wait(wait):
            try:
                with open(path, encoding="utf-8") as f:
                    models = parse_model_config(f.read(), path)
            except (OSError, ValueError) as error:
                log.error("Failed to read ModelServerConfig file: %s", error)
                continue
            if models is None:
                continue  # "Taking no action for empty config" (server_core.cc); the config applied is the core's
            try:
                self.reload(models)
            except ServingError as error:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error.message)
            except Exception:  # logged; the next poll tries again
                log.exception("PollFilesystemAndReloadConfig failed to ReloadConfig")

    def reload(self, models):
        """Applies a new list of `ModelConfig`s (see `serving.core.ServerCore.reload`)."""
        self.manager.reload(models)

    @property
    def serving(self) -> bool:
        """Whether `start` has opened the ports (and `stop` has not been called)."""
        return self._state == "serving"

    def stop(self, grace: float = 30.0):
        """Refuses new requests, lets the accepted ones finish (up to `grace` s),
        then unloads. A server never started closes its ports; one still
        loading its model stops loading, and its `start` raises. A second
        call does nothing."""
        with self._lock:
            state, self._state = self._state, "stopped"
        self._stopping.set()
        # NOT_SERVING from now on, whatever a change sets: a load balancer stops sending before the drain.
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        if state == "stopped":
            return
        if state == "new":
            self._close()
            return
        if state == "starting":
            self.manager.stop()  # ends the load; start() sees "stopped" and closes the ports
            self._start_done.wait(grace)
            return
        done = self.grpc.stop(grace)
        try:
            if self.rest is not None:
                self.rest.drain(grace)
        finally:
            done.wait()
            self.manager.stop()  # a reload under way in the config poll ends (UNAVAILABLE)
            self._join_config_poller()
            if self.request_log is not None:
                self.request_log.close()

    def _join_config_poller(self):
        poller = self._config_poller
        if poller is not None and poller is not threading.current_thread():
            poller.join()

    def _close(self):
        """Closes whatever is open, at once: for a server that is not serving.
        Every step runs even if one before it fails."""
        with self._lock:
            self._state = "stopped"
        self._stopping.set()
        try:
            # gRPC's stop() leaves a never-started server's ports bound (until
            # the object is collected): start it to stop it at once.
            if not self._grpc_started:
                self.grpc.start()
            self.grpc.stop(None).wait()
        finally:
            try:
                if self.rest is not None:
                    if self._grpc_started:  # serve_forever runs: shutdown() waits for it
                        self.rest.shutdown()
                    self.rest.server_close()
            finally:
                self.manager.stop()
                self._join_config_poller()
                if self.request_log is not None:
                    self.request_log.close()


def _bool_flag(text: str) -> bool:
    """A boolean flag's value as TensorFlow's flag parser reads it: `--flag`,
    `--flag=true` or `--flag=false`, nothing else
    (tensorflow/core/util/command_line_flags.cc, ParseBoolFlag)."""
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return text == "true"


# ServerConfig's fields that come from a flag of another name.
_FLAGS = {"rest_api_timeout_seconds": "rest_api_timeout_in_ms", "load_retry_interval_seconds":
          "load_retry_interval_micros"}


def _config(parser, fields) -> ServerConfig:
    """A `ServerConfig` from the flags' values; a value it refuses is a usage error naming the flag."""
    try:
        return ServerConfig(**fields)
    except ValueError as error:
        message = str(error)
        for field in dataclasses.fields(ServerConfig):
            if f"`{field.name}`" in message:
                flag = _FLAGS.get(field.name, field.name)
                parser.error(f"--{flag}: {message}")
        parser.error(message)


def _read_config(parser, flag, path, parse):
    """The file a flag names, parsed; a file that cannot be read or parsed is a usage error naming the flag."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read())
    except (OSError, ValueError) as error:
        parser.error(f"--{flag}={path}: {error}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: pick a free one)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port; 0 turns REST off")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", help="directory of numbered SavedModel versions")
    p.add_argument("--model_config_file", help="ModelServerConfig in protobuf text format: several models, "
                   "version policies and labels (model_name and model_base_path are then ignored)")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0,
                   help="how often to read --model_config_file again and apply it (0: only at start)")
    p.add_argument("--allow_version_labels_for_unavailable_models", nargs="?", const=True, default=False,
                   type=_bool_flag, metavar="true|false",
                   help="a new version label may name a version that is not available yet")
    p.add_argument("--enable_batching", nargs="?", const=True, default=False, type=_bool_flag, metavar="true|false",
                   help="batch concurrent requests together")
    p.add_argument("--batching_parameters_file", help="BatchingParameters in protobuf text format")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="how often to look for new versions (0: only at start)")
    p.add_argument("--grpc_max_threads", type=int, default=64)
    p.add_argument("--max_num_load_retries", type=int, default=5,
                   help="retries of a failed version load (0: one attempt)")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                   help="between load retries (default one minute)")
    p.add_argument("--grpc_channel_arguments", default="", help='e.g. "grpc.max_receive_message_length=8388608"')
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0)
    p.add_argument("--ssl_config_file", help="SSLConfig in protobuf text format: serve gRPC over TLS")
    p.add_argument("--monitoring_config_file",
                   help="MonitoringConfig in protobuf text format: Prometheus metrics on the REST port")
    p.add_argument("--request_log_file", help="append one JSON line per request to this file (off by default)")
    p.add_argument("--request_log_include_text", nargs="?", const=True, default=False, type=_bool_flag,
                   metavar="true|false", help="write each request's text into the request log too")
    p.add_argument("--enable_grpc_healthcheck_service", nargs="?", const=True, default=False, type=_bool_flag,
                   metavar="true|false", help="serve gRPC's standard health service (grpc.health.v1.Health)")
    p.add_argument("--drain_seconds", type=float, default=30.0, help="on SIGTERM: how long in-flight requests may take")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000,
                   help="a REST client that stalls this long mid-request is answered 408 or dropped")
    p.add_argument("--rest_api_num_threads", type=int, default=4 * (os.cpu_count() or 1),
                   help="REST connections handled at once; more wait in the listen backlog")
    args = p.parse_args(argv)
    if not args.model_config_file and not args.model_base_path:
        p.error("give --model_base_path or --model_config_file")  # as server.cc: "Both ... are empty!"
    if not math.isfinite(args.drain_seconds) or args.drain_seconds < 0:
        p.error(f"--drain_seconds must be a finite number of seconds of at least 0, got {args.drain_seconds}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    batching = None
    if args.enable_batching:
        batching = BatchingParameters()
        if args.batching_parameters_file:
            batching = _read_config(p, "batching_parameters_file", args.batching_parameters_file,
                                        parse_batching_parameters)
    elif args.batching_parameters_file:
        p.error("--batching_parameters_file needs --enable_batching")
    if args.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)

    ssl = None
    if args.ssl_config_file:
        ssl = _read_config(p, "ssl_config_file", args.ssl_config_file, parse_ssl_config)
    monitoring_path = None
    if args.monitoring_config_file and not args.rest_api_port:
        # As tensorflow_model_server (model_servers/server.cc), which then does not read the file.
        log.warning("--monitoring_config_file: no REST port (--rest_api_port=0), so no metrics are served")
    elif args.monitoring_config_file:
        monitoring_path = _read_config(p, "monitoring_config_file", args.monitoring_config_file,
                                       parse_monitoring_config)
    models = None
    if args.model_config_file:
        models = _read_config(p, "model_config_file", args.model_config_file, parse_model_config) or []
    config = _config(p, dict(
        monitoring_path=monitoring_path,
        models=models,
        model_config_file=args.model_config_file and os.path.abspath(args.model_config_file),
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        request_log_file=args.request_log_file,
        request_log_include_text=args.request_log_include_text,
        enable_grpc_healthcheck_service=args.enable_grpc_healthcheck_service,
        model_name=args.model_name,
        model_base_path=args.model_base_path and os.path.abspath(args.model_base_path),
        port=args.port,
        rest_api_port=args.rest_api_port,
        batching=batching,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        grpc_max_threads=args.grpc_max_threads,
        grpc_channel_arguments=tuple(parse_channel_arguments(args.grpc_channel_arguments)),
        ssl=ssl,
        rest_api_timeout_seconds=args.rest_api_timeout_in_ms / 1000.0,
        rest_api_num_threads=args.rest_api_num_threads,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_seconds=args.load_retry_interval_micros / 1e6,
    ))
    try:
        server = ModelServer(config)
    except ValueError as error:  # a label the start cannot give (server_core.cc refuses it before loading)
        p.error(str(error) if str(error).startswith("--") else f"--model_config_file: {error}")
    stop = threading.Event()

    def on_signal(*_):
        if not stop.is_set() and not server.serving:
            # Still loading: start() runs in this thread, so the stop that ends
            # its load (and its retry waits) runs beside it.
            log.info("stopping while the model loads")
            threading.Thread(target=server.stop, args=(0.0,), name="stop", daemon=True).start()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        server.start()
    except RuntimeError as error:  # as TensorFlow Serving, which exits when its models never load
        if stop.is_set():
            log.info("stopped before serving")
            return 0
        log.error("%s", error)
        return 1
    stop.wait()
    log.info("stopping: draining in-flight requests (up to %.0f s)", args.drain_seconds)
    server.stop(args.drain_seconds)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
