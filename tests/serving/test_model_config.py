"""Several models, version policies and labels (--model_config_file), reloaded while serving.

What each should do is read from TensorFlow Serving's source:
model_servers/server_core.cc (ValidateModelConfigList; ReloadConfig checks
the labels before it loads anything; UpdateModelVersionLabelMap: a label must
name an available version, unless --allow_version_labels_for_unavailable_models
and the label is new or unchanged; ServableRequestFromModelSpec and
GetModelVersionForLabel for requests by label), model_servers/server.cc
(PollFilesystemAndReloadConfig), model_servers/get_model_status_impl.cc (a
status request ignores the label) and model_servers/model_service_impl.cc
(HandleReloadConfigRequest).
"""

import logging
import os
import shutil
import threading
import time

import grpc
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from keras_transformer.export.saved_model import export_saved_model
from serving.client import RestClient
from serving.core import ModelConfig
from serving.core import ServerCore
from serving.core import parse_model_config
from serving.errors import ServingError
from serving.server import ModelServer
from serving.server import ServerConfig
from serving.server import main as server_main
from serving.servables import VersionPolicy
from tests.serving.conftest import SENTENCES
from tests.serving.conftest import ServerProcess
from tests.serving.conftest import toy_model
from tests.serving.conftest import toy_tokenizer

SENTENCE = SENTENCES[0]


def _config(*models) -> str:
    """A ModelServerConfig in text format; each model (name, base, policy text, {label: version})."""
    parts = []
    for name, base, policy, labels in models:
        body = f'name: "{name}" base_path: "{base}" model_platform: "tensorflow" '
        if policy:
            body += f"model_version_policy {{ {policy} }} "
        body += " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
        parts.append(f"  config {{ {body} }}")
    return "model_config_list {\n" + "\n".join(parts) + "\n}\n"


def _write(path, text):
    """Replaces the file whole (a reader never sees half of it), as a deployment should."""
    staged = f"{path}.tmp"
    with open(staged, "w") as f:
        f.write(text)
    os.replace(staged, path)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """{"a": base with versions 1 and 2, "b": base whose version 1 is the seed-2 model,
    "c": base with version 1}, and {(model, version): translation of SENTENCE}."""
    # Exports of their own: other tests move the shared staging version away. serving_default alone:
    # these tests load many versions, and the signatures are not what they test.
    tokenizer = toy_tokenizer()
    root = tmp_path_factory.mktemp("models")
    options = dict(beam_size=2, max_extra_length=6, warmup_sentences=SENTENCES[:2], signatures=("serving_default",))
    sources = {}
    for seed in (1, 2):
        export_saved_model(toy_model(tokenizer, seed), tokenizer.vocab, str(root / f"seed{seed}"), version=1, **options)
        sources[seed] = str(root / f"seed{seed}" / "1")
    dirs = {}
    for name, versions in (("a", {1: sources[1], 2: sources[2]}), ("b", {1: sources[2]}), ("c", {1: sources[1]})):
        dirs[name] = str(root / name)
        for version, source in versions.items():
            shutil.copytree(source, os.path.join(dirs[name], str(version)))
    expected = {}
    for seed, path in sources.items():
        out = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant([SENTENCE]))
        expected[seed] = out["translation"].numpy()[0].decode()
    answers = {("a", 1): expected[1], ("a", 2): expected[2], ("b", 1): expected[2], ("c", 1): expected[1]}
    assert expected[1] != expected[2]  # the two models can be told apart by their answers
    return dirs, answers


def test_a_config_is_parsed_and_checked_as_tensorflow_serving_checks_it(tmp_path):
    models = parse_model_config(_config(("a", "/m/a", "specific { versions: 2 versions: 1 }", {"stable": 1}),
                                        ("b", "/m/b", "all {}", {}), ("c", "/m/c", "", {})))
    assert models == [
        ModelConfig("a", "/m/a", VersionPolicy("specific", versions=(1, 2)), (("stable", 1),)),
        ModelConfig("b", "/m/b", VersionPolicy("all")),
        ModelConfig("c", "/m/c", VersionPolicy("latest", 1)),
    ]
    assert parse_model_config("") is None  # neither field: TensorFlow Serving takes no action
    for text, error in (
        (_config(("a", "/m/a", "", {}), ("a", "/m/b", "", {})), "Illegal to list model a multiple times"),
        (_config(("a", "relative/a", "", {})), "absolute path"),
        (_config(("a", "/m/a", "latest { num_versions: 0 }", {})), None),  # 0 is unset: one version
        ('model_config_list { config { name: "a" base_path: "/m" model_platform: "tflite" } }', "tensorflow"),
        ('model_config_list { config { name: "a" base_pth: "/m" } }', "base_pth"),
        ("custom_model_config { }", "custom_model_config"),
        (_config(("", "/m/a", "", {})), "non-empty name"),
    ):
        if error is None:
            assert parse_model_config(text)[0].policy == VersionPolicy("latest", 1)
            continue
        with pytest.raises(ValueError, match=error):
            parse_model_config(text)
    # At the start no version is available yet: a label needs the flag (server_core.cc
    # checks labels before it loads), and the error names it.
    with pytest.raises(ValueError, match="allow_version_labels_for_unavailable_models"):
        ServerCore(models)
    ServerCore(models, allow_version_labels_for_unavailable_models=True)
    config = tmp_path / "models.config"
    config.write_text(_config(("a", str(tmp_path), "", {"stable": 1})))
    with pytest.raises(SystemExit):
        server_main([f"--model_config_file={config}", "--port=0", "--rest_api_port=0"])
    with pytest.raises(SystemExit):
        server_main(["--port=0"])  # neither a base path nor a config file


def test_version_policies_serve_the_versions_they_name(model_dirs, tmp_path):
    dirs, answers = model_dirs
    three = tmp_path / "three"
    for version in (1, 2, 3):
        shutil.copytree(os.path.join(dirs["a"], str(min(version, 2))), three / str(version))
    for policy, served in ((VersionPolicy("latest", 2), [2, 3]), (VersionPolicy("all"), [1, 2, 3]),
                           (VersionPolicy("specific", versions=(1, 3, 7)), [1, 3])):
        core = ServerCore([ModelConfig("m", str(three), policy)], poll_seconds=0)
        core.start()
        try:
            assert core.available_all() == {"m": served}
            with core.serve("m") as loaded:
                assert loaded.version == served[-1]  # no version asked: the largest available
            for version in (1, 2, 3):
                if version in served:
                    with core.serve("m", version) as loaded:
                        assert loaded.version == version
                else:
                    with pytest.raises(ServingError, match=f"Specific\\(m, {version}\\)"):
                        core.serve("m", version).__enter__()
            states = {v: s for v, s, _ in core.status("m")}
            assert {v for v, s in states.items() if s == 30} == set(served)  # AVAILABLE
        finally:
            core.stop()


def _predict_stub(address):
    channel = grpc.insecure_channel(address)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _ask(stub, model, version=None, label=None):
    """(the version that answered, its translation) of SENTENCE."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([SENTENCE]))
    response = stub.Predict(request, timeout=60)
    assert response.model_spec.name == model
    return response.model_spec.version.value, tf.make_ndarray(response.outputs["translation"])[0].decode()


def _until(condition, seconds=60):
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_two_models_with_labels_relabelled_added_and_moved_under_16_clients(model_dirs, tmp_path):
    dirs, answers = model_dirs
    # "b" moves to a base path whose version 2 (the seed-1 model) fails its first load.
    moved = tmp_path / "b2"
    shutil.copytree(os.path.join(dirs["a"], "1"), moved / "2")
    os.replace(moved / "2" / "saved_model.pb", tmp_path / "saved_model.pb")
    (moved / "2" / "saved_model.pb").write_bytes(b"still being copied")
    answers = {**answers, ("b", 2): answers[("a", 1)]}
    config = tmp_path / "models.config"
    labels = {"stable": 1, "canary": 2}
    _write(config, _config(("a", dirs["a"], "specific { versions: 1 versions: 2 }", labels),
                           ("b", dirs["b"], "", {})))
    server = ServerProcess(dirs["a"], f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                           "--allow_version_labels_for_unavailable_models", "--load_retry_interval_micros=1000000",
                           "--enable_grpc_healthcheck_service")
    channel, stub = _predict_stub(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    # What each label (and "b", with no version) may answer with now: a label being moved, or a
    # model being moved, may give its old or new version until the reload is applied, never any other.
    allowed = {"stable": {1}, "canary": {2}, "b": {1}}
    asks = [("a", None, "stable"), ("a", None, "canary"), ("a", 1, None), ("a", 2, None), ("b", None, None)]
    failures, answered, stop = [], [], threading.Event()
    lock = threading.Lock()

    def client(index):
        n = index
        while not stop.is_set():
            model, version, label = asks[n % len(asks)]
            n += 1
            with lock:
                if label or model == "b":
                    may = set(allowed[label or model])
                else:
                    may = {version or (2 if model == "a" else 1)}
            try:
                got, text = _ask(stub, model, version, label)
            except grpc.RpcError as error:
                failures.append((model, version, label, error.code(), error.details()))
                continue
            if got not in may or text != answers[(model, got)]:
                failures.append((model, version, label, got, text))
            with lock:
                answered.append((model, label, got))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
    try:
        for thread in threads:
            thread.start()
        _until(lambda: len(answered) > 40)
        # By REST too, by label.
        rest = RestClient(f"localhost:{server.rest_port}", "a", version_label="canary", retries=0)
        assert rest.translate([SENTENCE])[0] == [answers[("a", 2)]]

        # 1. Move "stable" to version 2 (both available): applied by the next poll.
        with lock:
            allowed["stable"] = {1, 2}
        _write(config, _config(("a", dirs["a"], "specific { versions: 1 versions: 2 }", {"stable": 2, "canary": 2}),
                               ("b", dirs["b"], "", {})))
        _until(lambda: _ask(stub, "a", label="stable")[0] == 2)
        with lock:
            allowed["stable"] = {2}
            mark = len(answered)
        _until(lambda: len(answered) > mark + 40)

        # 2. A label moved to a version that is not available: refused whole, nothing changes
        # (the model "c" added in the same file is not added either).
        _write(config, _config(("a", dirs["a"], "specific { versions: 1 versions: 2 }", {"stable": 7, "canary": 2}),
                               ("b", dirs["b"], "", {}), ("c", dirs["c"], "", {})))
        _until(lambda: any("version 7 of model a, which is not currently available" in line for line in server.log))
        with pytest.raises(grpc.RpcError) as error:
            _ask(stub, "c")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND

        # 3. Add model "c" (the label back where it was): it loads, and answers.
        _write(config, _config(("a", dirs["a"], "specific { versions: 1 versions: 2 }", {"stable": 2, "canary": 2}),
                               ("b", dirs["b"], "", {}), ("c", dirs["c"], "", {})))
        _until(lambda: _answers(stub, "c"))
        assert _ask(stub, "c") == (1, answers[("c", 1)])
        with lock:
            asks.append(("c", None, None))
            mark = len(answered)
        _until(lambda: len(answered) > mark + 40)

        # 4. Move "b" to another base path, whose version 2 fails its first load: version 1, loaded
        # from the old base path, answers until version 2 loads at its retry a second later.
        with lock:
            allowed["b"] = {1, 2}
        stays = _config(("a", dirs["a"], "specific { versions: 1 versions: 2 }", {"stable": 2, "canary": 2}),
                        ("b", str(moved), "", {}), ("c", dirs["c"], "", {}))
        _write(config, stays)
        _until(lambda: any("b version 2 failed to load (attempt 1" in line for line in server.log))
        with lock:
            mark = len(answered)
        _until(lambda: len(answered) > mark + 40)  # answered, by version 1, while version 2 waits
        os.replace(tmp_path / "saved_model.pb", moved / "2" / "saved_model.pb")
        _until(lambda: _ask(stub, "b")[0] == 2)
        with lock:
            allowed["b"] = {2}
            mark = len(answered)
        _until(lambda: len(answered) > mark + 40)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    try:
        assert failures == []
        assert {(m, label, v) for m, label, v in answered} >= {("a", "stable", 1), ("a", "stable", 2),
                                                                ("a", "canary", 2), ("b", None, 1), ("b", None, 2),
                                                                ("c", None, 1)}
        # 4. Remove "b": it stops answering; the others go on.
        _write(config, _config(("a", dirs["a"], "specific { versions: 1 versions: 2 }", {"stable": 2}),
                               ("c", dirs["c"], "", {})))
        _until(lambda: not _answers(stub, "b"))
        assert _ask(stub, "a", label="stable")[0] == 2
        with pytest.raises(grpc.RpcError) as error:
            _ask(stub, "a", label="canary")  # the label is gone with the config
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Unrecognized servable version label: canary" in error.value.details()
    finally:
        channel.close()
        server.stop()


def _answers(stub, model) -> bool:
    try:
        _ask(stub, model)
        return True
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        return False


def test_the_health_service_only_with_its_flag_under_tensorflow_servings_names(model_dirs, tmp_path):
    # model_servers/server.cc: gRPC's default health service only with --enable_grpc_healthcheck_service
    # (main.cc), which sets "ModelService" and "PredictionService"; "" is the whole server.
    dirs, _ = model_dirs
    base = tmp_path / "a"
    shutil.copytree(os.path.join(dirs["a"], "1"), base / "1")
    for enabled in (False, True):
        server = ModelServer(ServerConfig(models=(ModelConfig("a", str(base)),), port=0, rest_api_port=0,
                                          file_system_poll_wait_seconds=0, enable_grpc_healthcheck_service=enabled))
        server.start()
        channel = grpc.insecure_channel(f"localhost:{server.port}")
        try:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service=""):
                return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

            if not enabled:
                with pytest.raises(grpc.RpcError) as error:
                    status()
                assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
                continue
            for service in ("", "ModelService", "PredictionService"):
                assert status(service) == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as error:
                status("tensorflow.serving.PredictionService")
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            # Set by the change itself, not by a timer: NOT_SERVING as soon as the poll that
            # unloads the last version returns, SERVING as soon as the one that loads one does.
            shutil.rmtree(base / "1")
            server.manager._managers["a"].poll()
            assert status() == status("PredictionService") == health_pb2.HealthCheckResponse.NOT_SERVING
            shutil.copytree(os.path.join(dirs["a"], "1"), base / "1")
            server.manager._managers["a"].poll()
            assert status() == health_pb2.HealthCheckResponse.SERVING
        finally:
            channel.close()
            server.stop(0)


def test_a_reload_that_fails_changes_nothing_and_the_config_poll_goes_on(model_dirs, tmp_path, monkeypatch, caplog):
    # model_servers/server.cc, PollFilesystemAndReloadConfig: a reload that fails is logged, and the
    # next poll tries again. A base path that could not be listed (PermissionError) was found after
    # model "b" had been removed and the labels swapped, and its error ended the poll thread.
    dirs, _ = model_dirs
    forbidden = tmp_path / "forbidden"
    shutil.copytree(os.path.join(dirs["a"], "1"), forbidden / "1")
    listdir = os.listdir

    def refusing_listdir(path="."):
        if os.fspath(path) == str(forbidden):
            raise PermissionError(13, "Permission denied", str(forbidden))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refusing_listdir)
    config = tmp_path / "models.config"
    _write(config, _config(("a", dirs["a"], "", {}), ("b", dirs["b"], "", {})))
    server = ModelServer(ServerConfig(model_config_file=str(config), model_config_file_poll_wait_seconds=0.1,
                                      port=0, rest_api_port=0, file_system_poll_wait_seconds=0))
    server.start()
    try:
        with caplog.at_level(logging.ERROR, logger="serving"):
            _write(config, _config(("a", str(forbidden), "", {"x": 2}), ("c", dirs["c"], "", {})))
            _until(lambda: any("failed to ReloadConfig" in r.getMessage() for r in caplog.records))
        assert any(f"Could not list base path {forbidden} for servable a" in r.getMessage() for r in caplog.records)
        assert server.manager.names() == ["a", "b"]  # nothing changed
        assert server.manager._managers["a"].base_path == dirs["a"]
        with pytest.raises(ServingError, match="Unrecognized servable version label: x"):
            server.manager.serve("a", label="x")
        # An error no check foresees is logged too, and the poll goes on.
        reload, failures = server.manager.reload, []

        def failing_once(models):
            if not failures:
                failures.append(models)
                raise RuntimeError("an error no check foresees")
            return reload(models)

        monkeypatch.setattr(server.manager, "reload", failing_once)
        _write(config, _config(("a", dirs["a"], "", {}), ("c", dirs["c"], "", {})))
        _until(lambda: server.manager.names() == ["a", "c"])
        assert failures
    finally:
        server.stop(0)


def test_the_config_poll_compares_the_file_with_the_config_applied_and_stop_waits_for_it(model_dirs, tmp_path,
                                                                                        monkeypatch):
    # A reload over gRPC and the config poll could interleave so that ModelServer's own copy of the
    # applied config (assigned after ServerCore.reload returned) named another config than the one
    # applied; the poll then took the file for applied and skipped it for good. Here the core is
    # moved to another config behind the poll's back, as that interleaving left it: the next poll
    # applies the file again (server.cc, PollFilesystemAndReloadConfig, reloads it every period).
    dirs, _ = model_dirs
    config = tmp_path / "models.config"
    _write(config, _config(("a", dirs["a"], "", {})))
    server = ModelServer(ServerConfig(model_config_file=str(config), model_config_file_poll_wait_seconds=0.1,
                                      port=0, rest_api_port=0, file_system_poll_wait_seconds=0))
    server.start()
    stopper, entered, release = None, threading.Event(), threading.Event()
    try:
        server.manager.reload([ModelConfig("a", dirs["a"]), ModelConfig("c", dirs["c"])])
        _until(lambda: server.manager.names() == ["a"])
        # stop() waits for the poll thread, here in a reload (the poll thread was left running).
        reload = server.manager.reload

        def held_reload(models):
            entered.set()
            release.wait(60)
            return reload(models)

        monkeypatch.setattr(server.manager, "reload", held_reload)
        _write(config, _config(("a", dirs["a"], "", {}), ("c", dirs["c"], "", {})))
        _until(entered.is_set)
        stopper = threading.Thread(target=server.stop, args=(0,), daemon=True)
        stopper.start()
        stopper.join(2)
        assert stopper.is_alive(), "stop() returned while the poll thread was in a reload"
    finally:
        release.set()
        if stopper is None:
            server.stop(0)
    stopper.join(60)
    assert not stopper.is_alive() and not server._config_poller.is_alive()


def test_health_and_reload_over_grpc(model_dirs, tmp_path):
    dirs, answers = model_dirs
    empty = tmp_path / "empty"
    empty.mkdir()
    # A model with no version on disk yet: the server opens its ports once it has one, as
    # TensorFlow Serving waits for every configured model, not only for the versions it finds
    # (server_core.cc, ConnectAdaptersToManagerAndAwaitModelLoads: Latest(name) of each model).
    server = ModelServer(ServerConfig(models=(ModelConfig("a", dirs["a"]), ModelConfig("late", str(empty))),
                                      port=0, rest_api_port=0, file_system_poll_wait_seconds=0.2,
                                      enable_grpc_healthcheck_service=True, max_num_load_retries=0))
    health = None
    try:
        starting = threading.Thread(target=server.start, daemon=True)
        starting.start()
        _until(lambda: server.manager.available_all() == {"a": [2], "late": []})
        assert not server.serving
        shutil.copytree(os.path.join(dirs["c"], "1"), empty / "1")
        starting.join(60)
        assert server.serving
        channel = grpc.insecure_channel(f"localhost:{server.port}")
        health = health_pb2_grpc.HealthStub(channel)

        def status(service=""):
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

        assert status() == status("PredictionService") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND

        # HandleReloadConfigRequest: all or nothing.
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.config.add(name="a", base_path=dirs["a"]).version_labels["x"] = 9
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(request, timeout=60)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert server.manager.names() == ["a", "late"]
        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.config.add(name="a", base_path=dirs["a"]).version_labels["x"] = 2
        assert models.HandleReloadConfigRequest(request, timeout=60).status.error_code == 0
        assert server.manager.names() == ["a"]
        with server.manager.serve("a", label="x") as loaded:
            assert loaded.version == 2
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A model added that does not load: UNKNOWN, as model_service_impl.cc passes on
        # ServerCore::ReloadConfig's error (server_core.cc, WaitUntilModelsAvailable); it was OK.
        broken = tmp_path / "broken"
        (broken / "1").mkdir(parents=True)
        (broken / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.config.add(name="a", base_path=dirs["a"])
        request.config.model_config_list.config.add(name="broken", base_path=str(broken))
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(request, timeout=60)
        assert error.value.code() == grpc.StatusCode.UNKNOWN
        assert error.value.details().startswith(
            "1 model(s) did not become available: {{{name: broken version: 1} due to error: failed to load: ")
        assert server.manager.names() == ["a", "broken"]  # applied all the same, as in TensorFlow Serving
        assert status() == health_pb2.HealthCheckResponse.SERVING  # "broken" has never served: it does not count

        # A drain turns NOT_SERVING before it waits for the requests in flight:
        # a watcher (a load balancer) hears it while the server still drains.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=server.stop, args=(2.0,))
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopper.join(30)
        channel.close()
    finally:
        server.stop(0)
