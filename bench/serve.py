"""Serving throughput and latency: the model server over gRPC against in-process translation.

Starts `python -m serving.server` on the export, without and then with dynamic
batching, and sends one sentence per request from 1, 8 and 32 concurrent
clients. In the same run it translates the same sentences in this process,
one call per sentence, through the loaded SavedModel: the peer the serving
overhead is measured against.

    python bench/serve.py --export models/multi30k/1
    python bench/serve.py --model runs/multi30k-en-de/model.keras --vocab runs/multi30k-en-de/vocab.txt

Prints a table and two ratios: batched throughput at concurrency 32 over
concurrency 1, and gRPC latency at concurrency 1 over in-process latency.

    python bench/serve.py --export models/multi30k/1 --metrics-overhead

measures instead what Prometheus metrics cost: the batching server without
and with --monitoring_config_file (and a metrics scrape every second),
alternated over `--rounds`, at each concurrency; it prints the throughput and
p50/p99 ratios, off over on. `--toy` exports a small random model to measure
on (its decoding is cheap, so the metrics' share is larger than on a real model).
"""

import argparse
import gzip
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_SENTENCES = os.path.join(ROOT, "..", "shared", "data", "multi30k", "test_2016_flickr.en.gz")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_server(base_dir, batching_file=None, monitoring_file=None):
    rest_port = _free_port()
    flags = [f"--model_base_path={base_dir}", "--model_name=bench", "--port=0", f"--rest_api_port={rest_port}",
             "--file_system_poll_wait_seconds=0"]
    if monitoring_file:
        flags.append(f"--monitoring_config_file={monitoring_file}")
    if batching_file:
        flags += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
    process = subprocess.Popen([sys.executable, "-m", "serving.server", *flags], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        match = re.search(r"Running gRPC ModelServer at 0\.0\.0\.0:(\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            process.rest_port = rest_port
            return process, f"localhost:{match[1]}"
    raise RuntimeError("the server did not start")


def run_clients(address, sentences, concurrency):
    """Each client takes the next sentence from a shared queue; returns (seconds, latencies)."""
    from serving.client import GrpcClient

    work = queue.Queue()
    for sentence in sentences:
        work.put(sentence)
    latencies, lock = [], threading.Lock()
    clients = [GrpcClient(address, "bench", timeout=300) for _ in range(concurrency)]
    for client in clients:  # connected and warm before the clock starts
        client.translate(sentences[:1])

    def worker(client):
        while True:
            try:
                sentence = work.get_nowait()
            except queue.Empty:
                return
            start = time.perf_counter()
            client.translate([sentence])
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    return elapsed, latencies


def in_process(export_dir, sentences):
    import tensorflow as tf

    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    serve(text=tf.constant(sentences[:1]))
    latencies = []
    start = time.perf_counter()
    for sentence in sentences:
        t = time.perf_counter()
        serve(text=tf.constant([sentence]))
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - start, latencies


def _row(name, count, elapsed, latencies):
    ms = np.asarray(latencies) * 1000
    return {"setting": name, "sentences_per_s": count / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", help="a SavedModel version directory (base/N)")
    p.add_argument("--model", help="or: a .keras model to export first")
    p.add_argument("--vocab", help="with --model: its vocab.txt")
    p.add_argument("--sentences", default=DEFAULT_SENTENCES, help="raw source sentences, one per line (.gz or text)")
    p.add_argument("--count", type=int, default=192, help="sentences per setting")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-micros", type=int, default=10000)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--metrics-overhead", action="store_true", help="measure metrics off against on instead")
    p.add_argument("--rounds", type=int, default=3, help="with --metrics-overhead: off/on rounds, alternated")
    p.add_argument("--toy", action="store_true", help="export a small random model to serve instead")
    args = p.parse_args()

    opener = gzip.open if args.sentences.endswith(".gz") else open
    with opener(args.sentences, "rt", encoding="utf-8") as f:
        sentences = [line.strip() for line in f][: args.count]
    work = tempfile.mkdtemp(prefix="bench-serve-")
    if args.export:
        export_dir = os.path.abspath(args.export)
        base = os.path.join(work, "model")
        os.makedirs(base)
        os.symlink(export_dir, os.path.join(base, "1"))
    elif args.toy:
        base = os.path.join(work, "model")
        export_dir = _toy_export(base, sentences)
    else:
        if not (args.model and args.vocab):
            p.error("give --export, or --model and --vocab (or --toy)")
        subprocess.run([sys.executable, "-m", "keras_transformer.export", "export", "--model", args.model,
                        "--vocab", args.vocab, "--base-dir", os.path.join(work, "model")], check=True, cwd=ROOT)
        base = os.path.join(work, "model")
        export_dir = os.path.join(base, "1")
    batching = os.path.join(work, "batching.config")
    with open(batching, "w") as f:
        f.write(f"max_batch_size {{ value: {args.max_batch_size} }}\n"
                f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
                "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 100 }\n")

    levels = [int(c) for c in args.concurrency.split(",")]
    if args.metrics_overhead:
        return metrics_overhead(base, batching, sentences, levels, args.rounds, work, args.json)
    rows = []
    elapsed, latencies = in_process(export_dir, sentences)
    rows.append(_row("in-process, one call per sentence", len(sentences), elapsed, latencies))
    print(rows[-1], flush=True)
    for label, config in (("no batching", None), ("batching", batching)):
        process, address = start_server(base, config)
        try:
            for level in levels:
                elapsed, latencies = run_clients(address, sentences, level)
                rows.append(_row(f"gRPC, {label}, concurrency {level}", len(sentences), elapsed, latencies))
                print(rows[-1], flush=True)
        finally:
            process.terminate()
            process.wait()

    print(
        f"\n{len(sentences)} sentences from {os.path.basename(args.sentences)}, "
        "one per request, beam search as exported\n"
    )
    print("| setting | sentences/s | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['setting']} | {row['sentences_per_s']:.1f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} |")
    by_name = {row["setting"]: row for row in rows}
    low, high = f"gRPC, batching, concurrency {levels[0]}", f"gRPC, batching, concurrency {levels[-1]}"
    scaling = by_name[high]["sentences_per_s"] / by_name[low]["sentences_per_s"]
    overhead = by_name[f"gRPC, no batching, concurrency {levels[0]}"]["p50_ms"] / rows[0]["p50_ms"]
    print(f"\nbatched throughput, concurrency {levels[-1]} / {levels[0]}: {scaling:.2f}x (target >= 3)")
    print(f"serving overhead at concurrency {levels[0]}, gRPC p50 / in-process p50: {overhead:.3f}x (target < 1.2)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "scaling": scaling, "overhead": overhead}, f, indent=2)


def _toy_export(base, sentences):
    """A random 2-layer model and a WordPiece vocabulary learned from `sentences`, exported as base/1."""
    import keras

    import keras_transformer as kt
    from keras_transformer.data import WordPieceTokenizer
    from keras_transformer.export.saved_model import export_saved_model

    tokenizer = WordPieceTokenizer.learn(sentences, vocab_size=500, min_count=1)
    keras.utils.set_random_seed(0)
    model = kt.Transformer(tokenizer.vocab_size, tokenizer.vocab_size, num_layers=2, d_model=64, num_heads=4,
                           d_ff=128, max_length=64)
    model.build()
    export_saved_model(model, tokenizer.vocab, base, version=1, beam_size=2, max_extra_length=10)
    return os.path.join(base, "1")


def _scrape_every_second(port, stop):
    import urllib.request

    while not stop.wait(1.0):
        try:
            urllib.request.urlopen(f"http://localhost:{port}/monitoring/prometheus/metrics", timeout=10).read()
        except OSError:
            pass


def bookkeeping_cost(n=100_000):
    """Microseconds of metrics bookkeeping per request (a count, two latencies, a batch), and
    milliseconds per scrape, measured in this process: the part of the overhead that noise cannot hide."""
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics(known_model=lambda name: name == "bench", available_versions=lambda: {"bench": [1]})
    start = time.perf_counter()
    for _ in range(n):
        now = time.monotonic()
        metrics.record_request("bench", "Predict", "GRPC", "OK", now)
        metrics.record_run("bench", "serving_default", now)
        metrics.record_batch([1], 1, 1, "batch_threads", [now], now)
    per_request = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(200):
        metrics.exposition()
    return per_request, (time.perf_counter() - start) / 200 * 1e3


def metrics_overhead(base, batching, sentences, levels, rounds, work, json_path):
    """Throughput and latency of the batching server without and with metrics, alternated."""
    monitoring = os.path.join(work, "monitoring.config")
    with open(monitoring, "w") as f:
        f.write("prometheus_config { enable: true }\n")
    results = {}  # (metrics on, level) -> [(elapsed, latencies)]
    for _ in range(rounds):
        for on in (False, True):
            process, address = start_server(base, batching, monitoring if on else None)
            stop = threading.Event()
            if on:
                threading.Thread(target=_scrape_every_second, args=(process.rest_port, stop), daemon=True).start()
            try:
                run_clients(address, sentences[:8], levels[-1])  # warm the connections and the batch shapes
                for level in levels:
                    results.setdefault((on, level), []).append(run_clients(address, sentences, level))
            finally:
                stop.set()
                process.terminate()
                process.wait()
    print(f"\n{len(sentences)} sentences per setting, {rounds} rounds, metrics off and on alternated\n")
    print("| concurrency | metrics | sentences/s | p50 ms | p99 ms |\n| ---: | --- | ---: | ---: | ---: |")
    summary = {}
    for level in levels:
        for on in (False, True):
            runs = results[(on, level)]
            latencies = np.concatenate([np.asarray(lat) for _, lat in runs])
            rate = len(sentences) * len(runs) / sum(e for e, _ in runs)
            summary[(on, level)] = (rate, np.percentile(latencies, 50) * 1e3, np.percentile(latencies, 99) * 1e3)
            r, p50, p99 = summary[(on, level)]
            print(f"| {level} | {'on' if on else 'off'} | {r:.1f} | {p50:.1f} | {p99:.1f} |")
    ratios = {}
    for level in levels:
        (r0, a0, b0), (r1, a1, b1) = summary[(False, level)], summary[(True, level)]
        ratios[level] = {"throughput_off_over_on": r0 / r1, "p50_on_over_off": a1 / a0, "p99_on_over_off": b1 / b0}
        print(f"concurrency {level}: throughput off/on {r0 / r1:.3f}x, p50 on/off {a1 / a0:.3f}x, "
              f"p99 on/off {b1 / b0:.3f}x (target: within 1.05)")
    per_request, per_scrape = bookkeeping_cost()
    p50 = summary[(False, levels[0])][1]
    print(f"bookkeeping: {per_request:.1f} us per request ({per_request / (p50 * 1e3):.5%} of the p50 at "
          f"concurrency {levels[0]}), {per_scrape:.2f} ms per scrape")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"ratios": {str(k): v for k, v in ratios.items()}, "us_per_request": per_request,
                       "ms_per_scrape": per_scrape}, f, indent=2)


if __name__ == "__main__":
    main()
