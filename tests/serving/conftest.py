"""An exported toy model (two versions) and a model server running it in a subprocess."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import keras_transformer as kt
from keras_transformer.data import WordPieceTokenizer
from keras_transformer.export.saved_model import export_saved_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SENTENCES = [
    "A man rides a bike.", "Two dogs run in the park.", "A woman is reading a book.",
    "Children play soccer.", "A bike.", "The dog runs, and the man rides.", "", "A man.",
]


def toy_model(tokenizer, seed):
    """A small random model whose logits are large, so beam search has clear winners."""
    import keras

    keras.utils.set_random_seed(seed)
    model = kt.Transformer(
        tokenizer.vocab_size, tokenizer.vocab_size, num_layers=1, d_model=16, num_heads=2, d_ff=32, max_length=40
    )
    model.build()
    for weight in model.weights:
        if "embedding" in weight.path:
            weight.assign(weight * 4.0)
    return model


def toy_tokenizer():
    words = "a man rides bike . two dogs run in the park woman is reading book children play soccer , and runs"
    return WordPieceTokenizer.learn([words] * 10, vocab_size=200, min_count=1)


def _exports(tmp_path_factory, **options):
    """(base_dir with version 1, staging dir holding version 2, tokenizer)."""
    tokenizer = toy_tokenizer()
    base = str(tmp_path_factory.mktemp("models"))
    staging = str(tmp_path_factory.mktemp("staging"))
    options = dict(beam_size=2, max_extra_length=6, warmup_sentences=SENTENCES[:2], **options)
    export_saved_model(toy_model(tokenizer, 1), tokenizer.vocab, base, version=1, **options)
    export_saved_model(toy_model(tokenizer, 2), tokenizer.vocab, staging, version=2, **options)
    return base, staging, tokenizer


@pytest.fixture(scope="session")
def serving_exports(tmp_path_factory):
    """The export as users get it, every signature: (base_dir with version 1, staging dir holding
    version 2, tokenizer)."""
    return _exports(tmp_path_factory)


@pytest.fixture(scope="session")
def lean_exports(tmp_path_factory):
    """The same models with serving_default alone, for the tests of loading, versions, labels and
    reloads, which load many versions: each loads and warms up in about half the time."""
    return _exports(tmp_path_factory, signatures=("serving_default",))


def read_to_close(sock) -> bytes:
    """Everything `sock` receives until the other side closes it; then closes it."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received


def json_reply(sock):
    """The JSON body of the one HTTP response `sock` receives before it closes, checked to be 200."""
    reply = read_to_close(sock)
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply[:300]
    return json.loads(payload)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m serving.server` on free ports; `.port`, `.rest_port`, `.process`."""

    def __init__(self, base, *flags):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--port=0", f"--rest_api_port={free_port()}", "--model_name=toy",
             f"--model_base_path={base}", *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.log = []
        self.port = self.rest_port = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()  # also keeps the pipe from filling
        if not self._ready.wait(180) or self.rest_port is None:
            self.process.kill()
            raise RuntimeError("the server did not start:\n" + "".join(self.log[-30:]))

    def _read(self):
        for line in self.process.stdout:
            self.log.append(line)
            if m := re.search(r"Running gRPC ModelServer at 0\.0\.0\.0:(\d+)", line):
                self.port = int(m[1])
            if m := re.search(r"HTTP/REST API at:localhost:(\d+)", line):
                self.rest_port = int(m[1])
                self._ready.set()
        self._ready.set()  # exited

    @property
    def address(self):
        return f"localhost:{self.port}"

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def server(serving_exports, tmp_path_factory):
    base, _, _ = serving_exports
    own = str(tmp_path_factory.mktemp("served"))
    shutil.copytree(os.path.join(base, "1"), os.path.join(own, "1"))
    batching = os.path.join(own, "..", "batching.config")
    with open(batching, "w") as f:
        f.write("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\nnum_batch_threads { value: 1 }\n")
    process = ServerProcess(own, "--enable_batching", f"--batching_parameters_file={batching}",
                            "--file_system_poll_wait_seconds=0.5")
    process.base = own
    yield process
    process.stop()


@pytest.fixture(scope="session")
def in_process(serving_exports):
    """Translate with a SavedModel loaded here: {version: fn(list of str) -> (texts, log_probs)}."""
    import tensorflow as tf

    base, staging, _ = serving_exports
    loaded = {1: tf.saved_model.load(os.path.join(base, "1")), 2: tf.saved_model.load(os.path.join(staging, "2"))}

    def translate(version, texts):
        out = loaded[version].signatures["serving_default"](text=tf.constant(texts, tf.string))
        return [t.decode() for t in out["translation"].numpy()], np.asarray(out["log_prob"])

    return translate
