"""The `translate` signature served: decoding chosen per request, batched with
other requests, over gRPC and REST, with a bad request among good ones."""

import os
import threading

import numpy as np
import pytest

from keras_transformer.decoding.per_sentence import CONTROLS
from keras_transformer.decoding.per_sentence import EMPTY_LOG_PROB
from serving.batching import BatchingParameters
from serving.client import GrpcClient
from serving.client import RestClient
from serving.client import main as client_main
from serving.errors import ServingError
from serving.errors import StatusCode
from serving.servables import LoadedVersion
from tests.serving.conftest import SENTENCES


def _request(texts, **values):
    """A translate request's inputs as the server receives them: arrays of each input's dtype, one row a text."""
    inputs = {"text": np.array([t.encode() for t in texts], dtype=object)}
    for name, (dtype, default) in CONTROLS.items():
        value = values.get(name, default)
        inputs[name] = np.asarray(value if np.ndim(value) else [value] * len(texts), dtype.as_numpy_dtype)
    return inputs


# Requests of several kinds: beam searches of two sizes with n-best, greedy, sampled with filters,
# a row-wise mix, and one refused (beam_size 9 > the export's max_beam_size 8) among them.
REQUESTS = [
    (SENTENCES[:2], dict(beam_size=2, num_return=2)),
    (SENTENCES[2:3], dict(beam_size=5, alpha=1.0, num_return=3, max_extra_length=4)),
    (SENTENCES[3:5], dict(beam_size=0)),
    (SENTENCES[:3], dict(beam_size=1, temperature=0.9, top_k=12, top_p=0.9, seed=3, num_return=4)),
    (SENTENCES[4:7], dict(beam_size=[3, 1, 0], temperature=[0.0, 1.2, 0.0], num_return=[2, 2, 1], seed=[0, 8, 0])),
    (SENTENCES[5:6], dict(beam_size=9)),
    (SENTENCES[1:2], dict(beam_size=1, temperature=0.7, seed=3, num_return=2)),
]
BAD = 5


@pytest.fixture(scope="module")
def version_path(serving_exports):
    base, _, _ = serving_exports
    return os.path.join(base, "1")


def test_requests_with_different_controls_share_a_batch_and_each_gets_its_own_answer(version_path):
    # Unbatched, each request alone: the reference.
    plain = LoadedVersion("toy", 1, version_path)
    expected = []
    for i, (texts, values) in enumerate(REQUESTS):
        if i == BAD:
            with pytest.raises(ServingError) as error:
                plain.run("translate", _request(texts, **values))
            assert error.value.code == StatusCode.INVALID_ARGUMENT
            assert "`beam_size` must be between 0 and 8" in error.value.message and "beam_size=9" in error.value.message
            expected.append(None)
        else:
            expected.append(plain.run("translate", _request(texts, **values)))
    plain.close()

    # Batched: all at once, into one batch (the timeout outlasts their arrival). The bad request
    # fails the merged batch, which is split until only it fails.
    batched = LoadedVersion("toy", 1, version_path, BatchingParameters(max_batch_size=64,
                                                                       batch_timeout_micros=2_000_000))
    results = [None] * len(REQUESTS)
    gate = threading.Barrier(len(REQUESTS))

    def send(i):
        texts, values = REQUESTS[i]
        gate.wait()
        try:
            results[i] = batched.run("translate", _request(texts, **values))
        except ServingError as error:
            results[i] = error

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(REQUESTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    sizes = list(batched.runners["translate"].batch_sizes)
    batched.close()
    assert max(sizes) > max(len(texts) for texts, _ in REQUESTS), sizes  # requests did share a batch
    for i, (result, reference) in enumerate(zip(results, expected)):
        if i == BAD:
            assert isinstance(result, ServingError) and result.code == StatusCode.INVALID_ARGUMENT
            assert "beam_size=9" in result.message
            continue
        assert not isinstance(result, Exception), result
        np.testing.assert_array_equal(result["translations"], reference["translations"])
        np.testing.assert_allclose(result["log_probs"], reference["log_probs"], atol=1e-5)
        texts, values = REQUESTS[i]
        wanted = np.broadcast_to(values.get("num_return", 1), [len(texts)])
        for row, n in enumerate(wanted):
            assert (result["log_probs"][row, :n] > EMPTY_LOG_PROB).all()
            assert (result["log_probs"][row, n:] == EMPTY_LOG_PROB).all()
            assert (result["translations"][row, n:] == b"").all()


def test_clients_choose_decoding_per_request_over_grpc_and_rest(server, in_process, capsys):
    texts = SENTENCES[:3]
    with GrpcClient(server.address, "toy") as client:
        n_best = client.hypotheses(texts, num_return=2, beam_size=2, max_extra_length=6)
        sampled = client.hypotheses(texts, num_return=3, beam_size=1, temperature=0.8, top_p=0.9, seed=5)
        again = client.hypotheses(texts, num_return=3, beam_size=1, temperature=0.8, top_p=0.9, seed=5)
        with pytest.raises(Exception, match="`num_return` must be at most beam_size"):
            client.hypotheses(texts, num_return=3, beam_size=2)
    rest = RestClient(f"localhost:{server.rest_port}", "toy")
    assert rest.hypotheses(texts, num_return=2, beam_size=2, max_extra_length=6) == n_best
    assert rest.hypotheses(texts, num_return=3, beam_size=1, temperature=0.8, top_p=0.9, seed=5) == sampled
    # The same seed, the same samples; the beam's best is serving_default's translation (the export's
    # beam 2 and 6 extra tokens).
    assert again == sampled and all(len(h) == 3 for h in sampled)
    best, _ = in_process(1, texts)
    assert [h[0][0] for h in n_best] == best
    assert all(h[0][1] >= h[1][1] for h in n_best)
    # The command line, n-best: each line the sentence's index, score and text.
    assert client_main(["--server", server.address, "--model_name", "toy", "--beam_size", "2", "--num_return", "2",
                        "--max_extra_length", "6", "--scores", *texts[:1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"0\t{score:.4f}\t{text}" for text, score in n_best[0]]


def test_empty_slots_keep_rest_replies_standard_json(server):
    # An n-best of one in a four-wide output: three empty slots. Their log-probability is finite:
    # -inf would be written -Infinity (as TensorFlow Serving writes it, util/json_tensor.cc), which
    # JavaScript's JSON.parse and other strict parsers refuse, for every default request.
    import json
    import urllib.request

    body = {"signature_name": "translate", "instances": [
        {"text": "A man.", **{name: default for name, (_, default) in CONTROLS.items()}, "beam_size": 2}]}
    request = urllib.request.Request(f"http://localhost:{server.rest_port}/v1/models/toy:predict",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as reply:
        raw = reply.read().decode()

    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")

    prediction = json.loads(raw, parse_constant=refuse)["predictions"][0]
    assert prediction["translations"][1:] == ["", "", ""] and prediction["log_probs"][1:] == [EMPTY_LOG_PROB] * 3
    assert EMPTY_LOG_PROB < prediction["log_probs"][0] < 0
