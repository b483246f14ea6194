"""A request log: one JSON line per request, off by default (--request_log_file).

Beyond TensorFlow Serving, whose per-model `logging_config` samples whole
PredictionLog protos into TFRecord files: here each request is one line

    {"time": "2026-12-02T19:05:43.123Z", "model": "en_de", "version": 2,
     "signature": "serving_default", "api": "Predict", "entrypoint": "GRPC",
     "status": "OK", "latency_ms": 41.7, "batch_size": 3}

(`version`, `signature` and `batch_size` are null for a request refused
before a version held it). The request's text is never written unless asked
(`include_text`: a string input's values as "inputs": {"text": [...]}).
"""

import datetime
import json
import logging
import threading
import time

import numpy as np

_local = threading.local()
log = logging.getLogger("serving")


def begin():
    """Starts the notes of the request this thread handles now."""
    _local.notes = {}


def note(**fields):
    """Adds what the request's handling learned (the version that ran it, ...)."""
    notes = getattr(_local, "notes", None)
    if notes is not None:
        notes.update(fields)


def _notes() -> dict:
    notes = getattr(_local, "notes", None) or {}
    _local.notes = None
    return notes


class RequestLog:
    """Appends one JSON line per request to `path` (thread-safe; each line written whole)."""

    def __init__(self, path: str, include_text: bool = False):
        self.path = path
        self.include_text = include_text
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.dropped = 0  # lines lost to write errors

    def write(self, model: str, api: str, entrypoint: str, status: str, started: float):
        """The request this thread handled, begun at `started` (`time.monotonic()`), ended now with `status`."""
        latency = (time.monotonic() - started) * 1e3
        notes = _notes()
        now = datetime.datetime.now(datetime.timezone.utc)
        entry = {
            "time": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
            "model": model, "version": notes.get("version"), "signature": notes.get("signature"), "api": api,
            "entrypoint": entrypoint, "status": status, "latency_ms": round(latency, 3),
            "batch_size": notes.get("batch_size"),
        }
        if self.include_text and notes.get("inputs"):
            entry["inputs"] = {
                key: [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                      for v in np.asarray(value).reshape(-1)]
                for key, value in notes["inputs"].items() if np.asarray(value).dtype == object
            }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as error:  # a full disk never fails the request it logs
                self.dropped += 1
                if self.dropped == 1:
                    log.error("request log %s: %s; lines are dropped until writes succeed", self.path, error)

    def close(self):
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
