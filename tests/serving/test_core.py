"""`ServerCore` and `ModelManager` in process: which versions serve while others
load or fail, reloads, readiness, and the answers for models with nothing loaded.

What each should do is read from TensorFlow Serving's source (named at each test).
Polls are called by hand (poll_seconds=0), so no test depends on a poller's timing.
"""

import os
import shutil
import threading
import time

import pytest

from serving.core import ModelConfig
from serving.core import ServerCore
from serving.errors import ServingError
from serving.errors import StatusCode
from serving.servables import ModelManager


def _copy(lean_exports, base, version):
    """The shared export's version 1 as `base/version`."""
    shutil.copytree(os.path.join(lean_exports[0], "1"), os.path.join(base, str(version)))


def _broken(base, version):
    """A version directory whose saved_model.pb does not parse: every load of it fails."""
    os.makedirs(os.path.join(base, str(version)))
    with open(os.path.join(base, str(version), "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")


def _mend(lean_exports, base, version):
    shutil.rmtree(os.path.join(base, str(version)))
    _copy(lean_exports, base, version)


def _manager(core, name):
    return core._managers[name]  # to poll by hand


def _served(core, name):
    with core.serve(name) as loaded:
        return loaded.version


def _until(condition, seconds=60):
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_a_base_path_change_keeps_the_old_version_serving_while_the_new_one_is_retried(lean_exports, tmp_path):
    # TensorFlow Serving's AvailabilityPreservingPolicy (core/availability_preserving_policy.cc):
    # while no aspired version is ready, the one loaded version that is no longer aspired stays.
    # Here the old base path's version 1 was unloaded as soon as the new base path's version 2
    # failed its first load, and the model answered NOT_FOUND until the retry.
    old, new = tmp_path / "old", tmp_path / "new"
    _copy(lean_exports, old, 1)
    _broken(new, 2)
    core = ServerCore([ModelConfig("m", str(old))], poll_seconds=0, max_num_load_retries=3, load_retry_interval=0)
    core.start()
    try:
        core.reload([ModelConfig("m", str(new))])  # version 2's first attempt fails: it will be retried
        assert [s for v, s, _ in core.status("m", 2)] == [20]  # LOADING, with its error
        assert _served(core, "m") == 1
        _manager(core, "m").poll()  # the second attempt fails too
        assert _served(core, "m") == 1
        _mend(lean_exports, new, 2)
        _manager(core, "m").poll()
        assert _served(core, "m") == 2
        assert core.available_all() == {"m": [2]}
    finally:
        core.stop()


def test_a_version_replaced_by_a_newer_one_keeps_serving_until_the_newer_one_loads(lean_exports, tmp_path):
    # A deployment deletes version 1 and writes version 2, which fails its first load (still being
    # copied): version 1, loaded though no longer on disk, serves until version 2 loads
    # (availability_preserving_policy.cc). It was unloaded at once, being off disk.
    base = tmp_path / "m"
    _copy(lean_exports, base, 1)
    manager = ModelManager("m", str(base), poll_seconds=0, max_num_load_retries=3, load_retry_interval=0)
    manager.start()
    try:
        shutil.rmtree(base / "1")
        _broken(base, 2)
        manager.poll()
        assert manager.loaded_versions() == [1]
        with manager.serve() as loaded:
            assert loaded.version == 1
        _mend(lean_exports, base, 2)
        manager.poll()
        assert manager.loaded_versions() == [2]
    finally:
        manager.stop()


def test_failures_at_the_old_base_path_are_not_counted_at_the_new_one(lean_exports, tmp_path):
    # Version 2 failed every retry at the old base path and was given up; at a new base path it
    # is another directory, and loads (the failure count was kept: it was never tried there).
    old, new = tmp_path / "old", tmp_path / "new"
    _copy(lean_exports, old, 1)
    _broken(old, 2)
    _copy(lean_exports, new, 2)
    core = ServerCore([ModelConfig("m", str(old))], poll_seconds=0, max_num_load_retries=1, load_retry_interval=0)
    core.start()  # version 2 fails twice and is passed over: version 1 serves
    try:
        assert core.available_all() == {"m": [1]}
        core.reload([ModelConfig("m", str(new))])
        assert core.available_all() == {"m": [2]}
    finally:
        core.stop()


def _raises(fn, *args):
    try:
        fn(*args)
    except Exception as error:  # noqa: BLE001 - the test looks at it
        return error
    return None


def test_a_model_being_added_leaves_the_server_ready_until_it_has_served(lean_exports, tmp_path):
    # A config push that adds a model reaches every replica at once: counting the model while it
    # loads took every replica out of rotation (NOT_SERVING) for the whole load, and for ever
    # when it never loads. A model counts once it has served; the models of the start do.
    a, b = tmp_path / "a", tmp_path / "b"
    _copy(lean_exports, a, 1)
    _broken(b, 1)
    core = ServerCore([ModelConfig("a", str(a))], poll_seconds=0, max_num_load_retries=2, load_retry_interval=0.5)
    core.start()
    try:
        assert core.ready()
        errors = []
        adding = threading.Thread(target=lambda: errors.append(
            _raises(core.reload, [ModelConfig("a", str(a)), ModelConfig("b", str(b))])))
        adding.start()
        _until(lambda: core.knows("b"))
        assert core.ready()  # "b" is loading (a retry every 0.5 s)
        adding.join(60)
        assert not adding.is_alive()
        assert core.ready() and core.available_all() == {"a": [1], "b": []}  # "b" never loaded
        shutil.rmtree(a / "1")
        _manager(core, "a").poll()
        assert not core.ready()  # "a", which has served, has no version now
    finally:
        core.stop()


def test_a_reload_whose_added_models_do_not_become_available_fails_as_tensorflow_servings(lean_exports, tmp_path):
    # model_servers/server_core.cc, WaitUntilModelsAvailable: UNKNOWN "N model(s) did not become
    # available: {{{name: b version: 1} due to error: ...}, }", the config applied all the same (the
    # model stays configured and polled). The reload answered OK. An added model with no version
    # on disk is reported at once (TensorFlow Serving would wait for one without limit).
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _copy(lean_exports, a, 1)
    _broken(b, 1)
    c.mkdir()
    core = ServerCore([ModelConfig("a", str(a))], poll_seconds=0, max_num_load_retries=0)
    core.start()
    try:
        with pytest.raises(ServingError) as error:
            core.reload([ModelConfig("a", str(a)), ModelConfig("b", str(b)), ModelConfig("c", str(c))])
        assert error.value.code == StatusCode.UNKNOWN
        message = error.value.message
        assert message.startswith("2 model(s) did not become available: {{{name: b version: 1} due to error: "
                                  "failed to load: "), message
        assert message.endswith(f"}}, {{{{name: c}} no version found under base path {c}}}, }}"), message
        assert core.names() == ["a", "b", "c"] and _served(core, "a") == 1
    finally:
        core.stop()


def test_removing_a_model_waits_neither_for_its_requests_nor_holds_up_the_rest_of_the_reload(lean_exports,
                                                                                             tmp_path):
    # server_core.cc, ReloadConfig: the new source config tears down removed models, which the
    # manager unloads on its own threads once their handles are released
    # (aspired_versions_manager.cc); the reload waits only for models added. Here the reload
    # waited for the request holding the removed model before it applied anything else.
    a, b = tmp_path / "a", tmp_path / "b"
    _copy(lean_exports, a, 1)
    _copy(lean_exports, b, 1)
    core = ServerCore([ModelConfig("a", str(a)), ModelConfig("b", str(b))], poll_seconds=0)
    core.start()
    held = core.serve("b")
    held.__enter__()
    try:
        reloaded = threading.Event()
        reloading = threading.Thread(target=lambda: (
            core.reload([ModelConfig("a", str(a), labels=(("stable", 1),))]), reloaded.set()), daemon=True)
        reloading.start()
        assert reloaded.wait(30), "the reload waited for the removed model's request"
        assert core.names() == ["a"] and core.version_for_label("a", "stable") == 1
        assert core.status("b") == [(1, 40, "")]  # UNLOADING: a request still holds it
        with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(b\)"):
            core.serve("b").__enter__()
    finally:
        held.__exit__(None, None, None)
    try:
        _until(lambda: core.status("b") == [(1, 50, "")])  # END once idle
    finally:
        core.stop()


def test_a_model_with_nothing_loaded_is_not_found_as_tensorflow_serving_answers(lean_exports, tmp_path):
    # core/basic_manager.cc: "Servable not found for request: " and the request as manager.h's
    # ServableRequest::DebugString writes it, Specific(name, version) when a version was asked (it
    # said Latest(c)); model_servers/get_model_status_impl.cc: NOT_FOUND "Could not find any
    # versions of model c" for a model with no version state (it answered OK with no versions).
    a, c = tmp_path / "a", tmp_path / "c"
    _copy(lean_exports, a, 1)
    c.mkdir()
    core = ServerCore([ModelConfig("a", str(a))], poll_seconds=0)
    core.start()
    try:
        with pytest.raises(ServingError, match="did not become available"):
            core.reload([ModelConfig("a", str(a)), ModelConfig("c", str(c))])  # configured, nothing on disk
        for model, version, request in (("c", 3, "Specific(c, 3)"), ("c", None, "Latest(c)"),
                                        ("nope", 3, "Specific(nope, 3)"), ("nope", None, "Latest(nope)")):
            with pytest.raises(ServingError) as error:
                core.serve(model, version).__enter__()
            assert (error.value.code, error.value.message) == (
                StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        for model, version, message in (("c", None, "Could not find any versions of model c"),
                                        ("c", 3, "Could not find version 3 of model c"),
                                        ("nope", None, "Could not find any versions of model nope")):
            with pytest.raises(ServingError) as error:
                core.status(model, version)
            assert (error.value.code, error.value.message) == (StatusCode.NOT_FOUND, message)
    finally:
        core.stop()


def test_the_start_waits_for_every_model_to_have_a_version(lean_exports, tmp_path):
    # TensorFlow Serving opens its ports once every configured model is available: server_core.cc,
    # ConnectAdaptersToManagerAndAwaitModelLoads, waits for Latest(name) of each model, a model with
    # no version on disk included, before server.cc goes on to open them. The start returned with
    # such a model still empty.
    a, late = tmp_path / "a", tmp_path / "late"
    _copy(lean_exports, a, 1)
    late.mkdir()
    core = ServerCore([ModelConfig("a", str(a)), ModelConfig("late", str(late))], poll_seconds=0.1)
    errors = []
    starting = threading.Thread(target=lambda: errors.append(_raises(core.start)), daemon=True)
    starting.start()
    try:
        _until(lambda: core.available_all() == {"a": [1], "late": []})
        assert starting.is_alive()  # "late" has no version: the start cannot have returned
        _copy(lean_exports, late, 3)
        starting.join(60)
        assert not starting.is_alive() and errors == [None]
        assert core.available_all() == {"a": [1], "late": [3]}
    finally:
        core.stop()
    # A poll interval of 0 never looks again: the start fails instead of waiting for ever.
    core = ServerCore([ModelConfig("late", str(tmp_path / "empty"))], poll_seconds=0)
    with pytest.raises(RuntimeError, match="no version found under base path"):
        core.start()
    core.stop()
