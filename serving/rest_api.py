"""TensorFlow Serving's REST API: routes, predict/classify/regress, status and metadata, and the HTTP server
that bounds threads, body sizes and request time."""

import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Optional
from typing import Union

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: E402

from serving.errors import ServingError  # noqa: E402
from serving.errors import StatusCode  # noqa: E402
from serving.servables import DEFAULT_SIGNATURE  # noqa: E402
from serving.servables import STATE_NAMES  # noqa: E402
from serving.json_tensor import from_json  # noqa: E402
from serving.json_tensor import json_value  # noqa: E402
from serving import request_log  # noqa: E402
from serving.json_tensor import to_json  # noqa: E402
from serving.metrics import CONTENT_TYPE  # noqa: E402

log = logging.getLogger("serving")

# TensorFlow Serving's REST routes (tensorflow_serving/model_servers/http_rest_api_util.cc:
# kPredictionApiGegex, kModelStatusApiRegex), case-insensitive; anything else is a
# "Malformed request" (INVALID_ARGUMENT, HTTP 400).
_POST_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?:(?P<method>classify|regress|predict)",
    re.IGNORECASE,
)
_GET_PATH = re.compile(
    r"/v1/models(?:/(?P<name>[^/:]+))?(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?:/(?P<metadata>metadata))?",
    re.IGNORECASE,
)


def _hold(manager, name: str, version):
    """The version a request names held for it: a number, a label (a str: `/labels/L`) or the latest (None)."""
    if isinstance(version, str):
        return manager.serve(name, label=version)
    return manager.serve(name, version)


def _parse_path(method: str, path: str, on_name=lambda name: None):
    """(model name, version: an int, a label (str) or None, the match) of a
    REST path, as TensorFlow Serving parses it."""
    # The route is the path alone: a query string does not change it (TensorFlow
    # Serving matches the URI's path).
    match = (_POST_PATH if method == "POST" else _GET_PATH).fullmatch(urllib.parse.urlsplit(path).path)
    if not match:
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {path[:200]}")
    name = urllib.parse.unquote(match["name"] or "")
    on_name(name)  # the whole path matched: the name is the request's, even if its version is refused
    if not name:
        raise ServingError(StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
    if match["label"]:
        return name, urllib.parse.unquote(match["label"]), match
    version = None
    if match["version"]:
        if len(match["version"]) > 19 or int(match["version"]) >= 2**63:
            # As TensorFlow Serving's absl::SimpleAtoi failing (http_rest_api_util.cc, ParseModelInfo).
            raise ServingError(
                StatusCode.INVALID_ARGUMENT, f"Failed to convert version: {match['version'][:40]} to numeric."
            )
        version = int(match["version"])
    return name, version, match


def rest_predict(manager, name: str, version: Union[int, str, None], body: dict) -> dict:
    """TensorFlow Serving's `:predict`: row ("instances") or columnar ("inputs") format."""
    signature = _signature_name(body)
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(StatusCode.INVALID_ARGUMENT, "the request needs exactly one of \"instances\" or \"inputs\"")
    with _hold(manager, name, version) as loaded:
        if signature not in loaded.inputs:
            loaded.check_inputs(signature, {}, {})  # raises NOT_FOUND with the signature list
        specs = loaded.inputs[signature]
        if "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list):
                raise ServingError(StatusCode.INVALID_ARGUMENT, "\"instances\" must be a list")
            if instances and all(isinstance(i, dict) and "b64" not in i for i in instances):
                keys = set(instances[0])
                if any(set(i) != keys for i in instances):
                    raise ServingError(StatusCode.INVALID_ARGUMENT, "every instance must have the same keys")
                columns = {k: [i[k] for i in instances] for k in keys}
            elif len(specs) == 1:
                columns = {next(iter(specs)): instances}
            else:
                raise ServingError(
                    StatusCode.INVALID_ARGUMENT,
                    f"signature \"{signature}\" takes {sorted(specs)}: give each instance as an object with those keys",
                )
        else:
            columns = body["inputs"]
            if not isinstance(columns, dict):
                if len(specs) != 1:
                    raise ServingError(
                        StatusCode.INVALID_ARGUMENT, f"\"inputs\" must be an object with keys {sorted(specs)}"
                    )
                columns = {next(iter(specs)): columns}
        arrays = {}
        for key, value in columns.items():
            dtype = specs[key].dtype if key in specs else tf.string
            arrays[key] = from_json(key, value, dtype)
        outputs = loaded.run(signature, arrays)
    if "instances" in body:
        rows = _row_batch_size(outputs)
        if len(outputs) == 1:
            return {"predictions": to_json(next(iter(outputs.values())))}
        return {"predictions": [{k: to_json(v[i]) if isinstance(v[i], np.ndarray) else json_value(v[i])
                                 for k, v in outputs.items()} for i in range(rows)]}
    if len(outputs) == 1:
        # One output: its value alone, unnamed, as TensorFlow Serving writes it
        # (tensorflow_serving/util/json_tensor.cc, MakeColumnarFormatJsonFromTensors).
        return {"outputs": to_json(next(iter(outputs.values())))}
    return {"outputs": {k: to_json(v) for k, v in outputs.items()}}


def _row_batch_size(outputs: dict) -> int:
    """The batch size every output shares, which a row answer needs
    (tensorflow_serving/util/json_tensor.cc, MakeRowFormatJsonFromTensors).

    Raises:
        ServingError: INVALID_ARGUMENT, with TensorFlow Serving's words, for an
            output of rank 0, or outputs of different batch sizes.
    """
    batch = None
    for name, value in sorted(outputs.items()):
        shape = np.shape(value)
        if not shape:
            raise ServingError(StatusCode.INVALID_ARGUMENT, f"Tensor name: {name} has no shape information ")
        if batch is not None and shape[0] != batch:
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}",
            )
        batch = shape[0]
    return batch


def _signature_name(body: dict) -> str:
    signature = body.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):
        raise ServingError(
            StatusCode.INVALID_ARGUMENT, f"\"signature_name\" must be a string, got {json.dumps(signature)[:40]}"
        )
    return signature or DEFAULT_SIGNATURE


def rest_classify_or_regress(manager, name: str, version: Union[int, str, None], method: str, body: dict):
    """`:classify` and `:regress`, answered as TensorFlow Serving answers them for a
    model whose signature is not of that method (every export of this library):
    the request is checked (tensorflow_serving/util/json_tensor.cc), then the
    signature's method (servables/tensorflow/classifier.cc, regressor.cc)."""
    if not isinstance(body.get("examples"), list):
        said = "is expected and was not found" if "examples" not in body else "must be a list"
        raise ServingError(StatusCode.INVALID_ARGUMENT, f"When method is {method}, key 'examples' {said}")
    signature = _signature_name(body)
    with _hold(manager, name, version) as loaded:
        if signature not in loaded.signature_defs:
            loaded.check_inputs(signature, {}, {})  # raises FAILED_PRECONDITION with the signature list
        expected = "tensorflow/serving/" + method
        found = loaded.signature_defs[signature].method_name
        if found != expected:
            kind = "classification" if method == "classify" else "regression"
            raise ServingError(
                StatusCode.INVALID_ARGUMENT,
                f"Expected {kind} signature method_name to be {expected}. Was: {found}",
            )
    raise ServingError(StatusCode.UNIMPLEMENTED, f"this server runs only predict signatures, not {method}")


def rest_status(manager, name: str, version: Union[int, str, None]) -> dict:
    if isinstance(version, str):
        version = None  # a label is not looked at: every version (get_model_status_impl.cc)
    return {
        "model_version_status": [
            {
                "version": str(number),
                "state": STATE_NAMES[state],
                "status": {"error_code": "UNKNOWN" if message else "OK", "error_message": message},
            }
            for number, state, message in manager.status(name, version)
        ]
    }


def rest_metadata(manager, name: str, version: Union[int, str, None]) -> dict:
    with _hold(manager, name, version) as loaded:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in loaded.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        return {
            "model_spec": {"name": loaded.name, "version": str(loaded.version), "signature_name": ""},
            # Proto field names, default values printed, as TensorFlow Serving's JSON
            # (tensorflow_serving/model_servers/http_rest_api_util.cc, ToJsonString).
            "metadata": {"signature_def": json_format.MessageToDict(
                signature_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
            )},
        }


# The requests TensorFlow Serving's REST handler takes, and counts (http_rest_api_util.h, kPathRegex).
_COUNTED_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)

# A REST reply's HTTP status as the gRPC status name the request count uses
# (the inverse of errors.HTTP_STATUS, for the replies made without a ServingError).
_STATUS_NAMES = {200: "OK", 400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
                 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def make_rest_handler(manager, max_body_bytes: int, timeout_seconds: float = 30.0, metrics=None,
                      metrics_path: Optional[str] = None, log_to=None):
    """The REST handler class; with `metrics` (a `serving.metrics.ServingMetrics`), it counts and
    times requests, and answers GET `metrics_path` with the Prometheus text; with `log_to`
    (a `serving.request_log.RequestLog`), it logs each request to a /v1/ path."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TensorFlow Serving's --rest_api_timeout_in_ms, twice: as the
        # socket's timeout (a client silent that long is answered 408, or
        # dropped before its request line), and as a deadline for the whole
        # request from its first line to its last byte, kept by the server's
        # reaper, so a client that sends a byte now and then cannot hold a
        # thread either. The reaper only shuts the connection for reading;
        # this thread, the only writer, then answers 408.
        timeout = timeout_seconds

        def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's name)
            log.debug("rest: " + format, *args)

        def handle_one_request(self):
            self._replied = False
            self._deadline = self.server.arm(self, timeout_seconds)
            try:
                super().handle_one_request()
            finally:
                self.server.finish(self._deadline)
            if self._deadline.expired:
                self.close_connection = True

        def _arrived(self) -> bool:
            """The request has been read in full; False if its deadline passed first."""
            return self.server.claim(self._deadline)

        # A two-word request line is HTTP/0.9 to http.server, which then sends
        # its error without a status line; answer as HTTP/1.0 instead, and refuse it.
        default_request_version = "HTTP/1.0"

        def parse_request(self):
            # The request's clock starts with its first line, not with the
            # idle wait before it on a kept-alive connection.
            self.server.rearm(self._deadline, timeout_seconds)
            if not super().parse_request():
                return False
            if len(self.requestline.split()) != 3:
                self.send_error(400, "HTTP/0.9 requests are not supported")
                return False
            framing = [self.headers.get_all(name) or [] for name in ("Content-Length", "Transfer-Encoding")]
            if any(len(values) > 1 for values in framing):
                # Repeated framing headers: a proxy may read them otherwise (RFC 9112, 6.3).
                self.send_error(400, "Content-Length and Transfer-Encoding may each appear only once")
                return False
            if self.command != "POST" and any(framing):
                self.close_connection = True  # a body that is never read is never read as a request
            return True

        def _reply(self, status: int, body: dict, content_type: str = "application/json"):
            if self._replied:
                return  # one answer per request, even when writing the first one failed
            self._replied = True
            if not self._arrived():
                status, body = 408, {"error": f"the request did not arrive in full within {timeout_seconds:g} s"}
                self._error_code = "DEADLINE_EXCEEDED"
            self._status = status
            if status >= 400 or self.server.saturated() or self.server.stopping():
                # After an error the rest of the stream may be an unread
                # body: close rather than read it as the next request. With
                # every thread busy, an idle keep-alive connection would hold
                # one: close it too.
                self.close_connection = True
            data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
            self._record()  # before the reply is sent, as TensorFlow Serving's http_server.cc records
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client left or stopped reading: nothing more to say to it
                self.close_connection = True

        def _read_body(self):
            """The request body, or None once answered: Content-Length or chunked
            (RFC 9112), at most `max_body_bytes`, within the request's deadline."""
            encoding = self.headers.get("Transfer-Encoding")
            declared = self.headers.get("Content-Length")
            if encoding is not None and declared is not None:
                # Both: a request-smuggling pattern (RFC 9112, 6.1); refuse it and close.
                raise ServingError(
                    StatusCode.INVALID_ARGUMENT, "a request must not have both Content-Length and Transfer-Encoding"
                )
            if encoding is not None and encoding.strip().lower() != "chunked":
                self._reply(501, {"error": f"Transfer-Encoding {encoding[:40]!r} is not supported (only chunked)"})
                return None
            try:
                if encoding is not None:
                    raw = self._read_chunked()
                else:
                    declared = "0" if declared is None else declared.strip()  # present but empty is an error
                    if not re.fullmatch(r"[0-9]{1,19}", declared):
                        raise ServingError(
                            StatusCode.INVALID_ARGUMENT,
                            f"Content-Length must be a non-negative integer. Received: {declared[:40]!r}",
                        )
                    size = int(declared)
                    if size > max_body_bytes:
                        raise _TooLarge(size)  # refused from the header: the body is not read
                    raw = self.rfile.read(size)
                    if len(raw) < size:
                        raise TimeoutError
            except _TooLarge as error:
                self._reply(
                    413, {"error": f"request body of {error.args[0]} bytes exceeds the limit of {max_body_bytes}"}
                )
                return None
            except (TimeoutError, OSError):
                self._reply(408, {"error": f"the request body did not arrive within {timeout_seconds:g} s"})
                return None
            if not self._arrived():
                self._reply(408, {})  # too late: _reply answers 408
                return None
            return raw

        def _read_chunked(self) -> bytes:
            body = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise TimeoutError
                size_text = line[:-2].split(b";", 1)[0]
                if not line.endswith(b"\r\n") or not re.fullmatch(rb"[0-9A-Fa-f]{1,15}", size_text):
                    raise ServingError(StatusCode.INVALID_ARGUMENT, f"malformed chunk size line {line[:40]!r}")
                size = int(size_text, 16)
                if size == 0:
                    for _ in range(100):  # trailer fields, up to the blank line
                        trailer = self.rfile.readline(8192)
                        if not trailer:
                            raise TimeoutError
                        if trailer == b"\r\n":
                            return bytes(body)
                        if not trailer.endswith(b"\r\n"):  # a bare LF: a proxy may frame it otherwise
                            raise ServingError(StatusCode.INVALID_ARGUMENT, "a trailer line does not end with CRLF")
                    raise ServingError(StatusCode.INVALID_ARGUMENT, "too many trailer fields")
                if len(body) + size > max_body_bytes:
                    raise _TooLarge(f"over {max_body_bytes}")
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise TimeoutError
                body += chunk
                if self.rfile.read(2) != b"\r\n":
                    raise ServingError(StatusCode.INVALID_ARGUMENT, "a chunk does not end with CRLF")

        def _route(self, method: str):
            if method == "GET" and not self._arrived():
                return self._reply(408, {})
            if metrics is None and log_to is None:
                return self._serve(method)
            path = urllib.parse.urlsplit(self.path).path
            if metrics is not None and path == metrics_path:
                # TensorFlow Serving's own handler for this path, for any method (http_server.cc): not counted.
                if method == "POST":
                    self.close_connection = True  # its body is not read
                return self._reply(200, metrics.exposition(), CONTENT_TYPE)
            if not _COUNTED_PATH.match(path):
                return self._serve(method)  # TensorFlow Serving's REST handler takes /v1/ paths only
            started, self._method, self._status, self._model_name = time.monotonic(), "", None, ""

            if log_to is not None:
                request_log.begin()

            def record():
                self._record = lambda: None  # once per request
                status = self._error_code or _STATUS_NAMES.get(self._status or 500, "INTERNAL")
                if metrics is not None:
                    metrics.record_request(self._model_name, self._method, "REST", status, started)
                if log_to is not None:
                    log_to.write(self._model_name, self._method, "REST", status, started)

            self._record = record
            try:
                self._serve(method)
            finally:
                self._record()  # a request that ended without a reply (a timeout before its body)
                self._record = lambda: None

        def _record(self):
            """Counts the request in the metrics (set by `_route` for a counted path)."""

        def _serve(self, method: str):
            self._error_code = None
            try:
                # The name counts only once the whole path matched: TensorFlow Serving's
                # RE2::FullMatch fills no argument otherwise (http_rest_api_util.cc, ParseModelInfo).
                name, version, match = _parse_path(method, self.path, lambda name: setattr(self, "_model_name", name))
                self._method = (match["method"] or "").lower() if method == "POST" else ""
                if method == "GET":
                    if match["metadata"]:
                        return self._reply(200, rest_metadata(manager, name, version))
                    return self._reply(200, rest_status(manager, name, version))
                if method == "POST":
                    raw = self._read_body()
                    if raw is None:
                        return  # answered (408, 413, 501) or timed out
                    try:
                        body = json.loads(raw or b"{}")
                    except (ValueError, RecursionError) as error:
                        raise ServingError(StatusCode.INVALID_ARGUMENT, f"the body is not JSON: {error}") from None
                    if not isinstance(body, dict):
                        raise ServingError(StatusCode.INVALID_ARGUMENT, "the body must be a JSON object")
                    if match["method"].lower() != "predict":
                        return self._reply(
                            200, rest_classify_or_regress(manager, name, version, match["method"].lower(), body)
                        )
                    return self._reply(200, rest_predict(manager, name, version, body))
                raise ServingError(StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {self.path[:200]}")
            except ServingError as error:
                self._error_code = error.code.name
                self._reply(error.http_status, {"error": error.message})
            except Exception as error:  # the server stays up; the caller hears what broke
                log.exception("REST request failed")
                self._error_code = "INTERNAL"
                self._reply(500, {"error": f"internal error: {error}"})

        def do_GET(self):  # noqa: N802
            self._route("GET")

        def do_POST(self):  # noqa: N802
            self._route("POST")

    return Handler


class _TooLarge(Exception):
    pass


class _Deadline:
    __slots__ = ("handler", "at", "expired", "done")

    def __init__(self, handler, at):
        self.handler, self.at, self.expired, self.done = handler, at, False, False


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_threads` at once: past that,
    new connections wait in the listen backlog (TensorFlow Serving's
    --rest_api_num_threads). A client silent for the handler's timeout
    frees its thread (the timeout applies to each read, not to a whole
    request), and while every thread is busy each connection closes after
    its response."""

    request_queue_size = socket.SOMAXCONN

    def __init__(self, address, handler, max_threads: int):
        self._closed = threading.Event()  # before binding: a failed bind calls server_close
        super().__init__(address, handler)
        self._max_threads = max_threads
        self._slots = threading.BoundedSemaphore(max_threads)
        self._active = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._deadlines = set()  # requests being read, each with the time it must have arrived by
        self._busy = 0  # requests read in full and not yet answered
        self._idle = threading.Condition(self._lock)
        self._connections = set()
        threading.Thread(target=self._reap, name="rest-deadlines", daemon=True).start()

    def saturated(self) -> bool:
        return self._active >= self._max_threads

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def arm(self, handler, seconds: float) -> _Deadline:
        """Starts a request's clock (when its handler waits for the request line)."""
        deadline = _Deadline(handler, time.monotonic() + seconds)
        with self._lock:
            self._deadlines.add(deadline)
        return deadline

    def rearm(self, deadline: _Deadline, seconds: float):
        with self._lock:
            if not deadline.expired and deadline in self._deadlines:
                deadline.at = time.monotonic() + seconds

    def claim(self, deadline: _Deadline) -> bool:
        """The request has arrived (or is being answered): stops its clock and counts
        it in flight. False if the reaper timed it out first. Idempotent."""
        with self._lock:
            if deadline.expired:
                return False
            if not deadline.done:
                self._deadlines.discard(deadline)
                self._busy += 1
                deadline.done = True
            return True

    def finish(self, deadline: _Deadline):
        """The handler is done with the request, answered or not."""
        with self._lock:
            self._deadlines.discard(deadline)
            if deadline.done:
                deadline.done = False
                self._busy -= 1
                self._idle.notify_all()

    def _reap(self):
        while not self._closed.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [d for d in self._deadlines if d.at <= now]
                for deadline in late:
                    deadline.expired = True
                    self._deadlines.discard(deadline)
            for deadline in late:
                # Never a write here (it could block, or interleave with the
                # handler's): shut the reading side, so the handler's read
                # returns and the handler itself answers 408 (or, idle between
                # requests, closes).
                try:
                    deadline.handler.connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def drain(self, grace: float):
        """Stops accepting (new connections are refused), lets the requests already
        read finish for up to `grace` seconds (None: none, as gRPC's `stop(None)`),
        then closes every connection."""
        grace = 0.0 if grace is None else grace
        # Refuse first: shutting the listening socket makes the kernel refuse new
        # connections at once and wakes serve_forever's poll; closing it only after
        # shutdown() (up to a 0.5 s poll later) let connections in, to reset them.
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.shutdown()
        self.socket.close()
        end = time.monotonic() + grace
        with self._lock:
            while self._busy and time.monotonic() < end:
                self._idle.wait(max(0.0, end - time.monotonic()))
            connections = list(self._connections)
        for sock in connections:  # idle keep-alive connections, and anything past the grace
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._closed.set()

    def process_request(self, request, client_address):
        # Wait for a thread, but not past a shutdown (serve_forever's loop
        # must return for `shutdown` to).
        while not self._slots.acquire(timeout=0.5):
            if self._stopping.is_set():
                self.shutdown_request(request)
                return
        with self._lock:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address):
        with self._lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections.discard(request)
            self._release()

    def _release(self):
        with self._lock:
            self._active -= 1
        self._slots.release()

    def shutdown(self):
        self._stopping.set()
        super().shutdown()

    def server_close(self):
        self._closed.set()
        super().server_close()
