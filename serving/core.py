"""Several models, their version policies and version labels: TensorFlow Serving's
`--model_config_file` (a `ModelServerConfig` in protobuf text format).

    model_config_list {
      config {
        name: "en_de"
        base_path: "/models/en_de"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
      config { name: "en_fr" base_path: "/models/en_fr" }
    }

`ServerCore` holds one `servables.ModelManager` per model and the label map,
and reloads the config while serving (`--model_config_file_poll_wait_seconds`,
or ModelService's HandleReloadConfigRequest) as TensorFlow Serving's
model_servers/server_core.cc does:

- a label must point at a version that is available when the config is
  applied, except that `--allow_version_labels_for_unavailable_models` lets a
  label that is new (or unchanged) point at a version still to load; so a
  canary is labelled in two steps: add the version, then move the label once
  it serves;
- a model added is loaded before the reload returns; a model removed stops
  taking requests at once and is unloaded once those it holds finish (the
  reload does not wait for them); a model that stays keeps serving throughout.

One difference, where TensorFlow Serving would apply part of a bad config:
a config that fails a check (a duplicate name, a relative base path, a label
at an unavailable version, a new base path that cannot be listed) changes
nothing, and the error names the check.
"""

import dataclasses
import logging
import os
import threading
from typing import Callable, Dict, List, Optional, Tuple

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError
from serving.errors import StatusCode
from serving.servables import ModelManager
from serving.servables import VersionPolicy
from serving.servables import versions_on_disk

log = logging.getLogger("serving")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model of a `ModelServerConfig`: its name, base path, version policy and labels."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: Tuple[Tuple[str, int], ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a model needs a non-empty name. Received: {self.name!r}")
        if not isinstance(self.base_path, str) or not os.path.isabs(self.base_path):
            # As ValidateModelConfigList (server_core.cc) without a root directory.
            raise ValueError(f"Expected model {self.name} to have an absolute path; got base_path={self.base_path!r}")
        for label, version in self.labels:
            if not label:
                raise ValueError(f"model {self.name}: a version label must be a non-empty string")

    @property
    def label_map(self) -> Dict[str, int]:
        return dict(self.labels)


def parse_model_config(text: str, what: str = "ModelServerConfig") -> Optional[List[ModelConfig]]:
    """The models of a `ModelServerConfig` in protobuf text format, checked;
    None for an empty config (neither `model_config_list` nor `custom_model_config`).

    Raises:
        ValueError: text that does not parse (line, column and field), a
            `custom_model_config`, a platform other than "tensorflow", two
            models of one name, a relative base path, or a bad version policy.
    """
    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{what}: {error}") from None
    return models_from_proto(proto, what)


def models_from_proto(proto, what: str = "ModelServerConfig") -> Optional[List[ModelConfig]]:
    """The models of a `ModelServerConfig` message, checked (see `parse_model_config`);
    None for a config that sets neither field (server_core.cc takes no action for it)."""
    if proto.WhichOneof("config") is None:
        return None
    if proto.WhichOneof("config") == "custom_model_config":
        raise ValueError(f"{what}: custom_model_config is not supported; use model_config_list")
    models, names = [], set()
    for config in proto.model_config_list.config:
        if config.name in names:
            raise ValueError(f"{what}: Illegal to list model {config.name} multiple times in config list")
        names.add(config.name)
        if config.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{what}: model {config.name}: model_platform must be \"tensorflow\", "
                             f"got {config.model_platform!r}")
        policy = config.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        try:
            if kind == "latest":
                # An unset num_versions is one, as in file_system_storage_path_source.cc.
                version_policy = VersionPolicy("latest", policy.latest.num_versions or 1)
            elif kind == "all":
                version_policy = VersionPolicy("all")
            else:
                version_policy = VersionPolicy("specific", versions=tuple(sorted(set(policy.specific.versions))))
            models.append(ModelConfig(config.name, config.base_path, version_policy,
                                      tuple(sorted(config.version_labels.items()))))
        except ValueError as error:
            raise ValueError(f"{what}: model {config.name or '(no name)'}: {error}") from None
    return models


def _why_unavailable(manager: ModelManager) -> str:
    """A model that did not load, as server_core.cc names one: its newest version
    that failed, with the error ("{name: NAME version: V} due to error: ...")."""
    failed = [(version, error) for version, _, error in manager.states() if error]
    if failed:
        return f"{{name: {manager.name} version: {failed[0][0]}}} due to error: {failed[0][1]}"
    return f"{{name: {manager.name}}} no version found under base path {manager.base_path}"


class ServerCore:
    """The models a server serves, by name, with their version labels.

    Args:
        models: `ModelConfig`s.
        allow_version_labels_for_unavailable_models: TensorFlow Serving's flag
            of that name (see the module docstring).
        on_change: called (without arguments, holding no lock) whenever what
            `ready` answers may have changed: a version starts or stops serving,
            a model is removed. None: nothing is called.
        manager_kwargs: what every `ModelManager` is made with (poll_seconds,
            batching, retries, metrics).
    """

    def __init__(self, models: List[ModelConfig], allow_version_labels_for_unavailable_models: bool = False,
                 on_change: Optional[Callable[[], None]] = None, **manager_kwargs):
        self.allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self.on_change = on_change
        self._manager_kwargs = manager_kwargs
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one config change at a time
        self._managers: Dict[str, ModelManager] = {}
        self._labels: Dict[str, Dict[str, int]] = {}
        self._retired: Dict[str, ModelManager] = {}  # removed models, stopped (asked for their last states)
        self._draining: List[threading.Thread] = []  # removed models' stops, each waiting for its requests
        self._joining = set()  # models added by a reload (they count for `ready` once they have served)
        self._stopped = False
        try:
            # Before anything loads, as at TensorFlow Serving's start: without the flag a label
            # fails here, no version being available yet (server_core.cc, ReloadConfig).
            self._check(models)
        except ServingError as error:
            raise ValueError(error.message) from None
        self._applied = list(models)  # the config applied (changed only under the reload lock)

    def names(self) -> List[str]:
        with self._lock:
            return sorted(self._managers)

    def knows(self, name: str) -> bool:
        with self._lock:
            return name in self._managers

    def ready(self) -> bool:
        """Every model that counts has an available version (the health check's SERVING).

        The models of the start count; a model added by a reload counts once a
        version of it has served, so that a config push adding a model does not
        take every replica out of rotation while it loads (nor for ever, if it
        never loads).
        """
        with self._lock:
            if self._stopped:
                return False
            counted = [m for name, m in self._managers.items() if name not in self._joining or m.has_served]
        return bool(counted) and all(m.loaded_versions() for m in counted)

    def _changed(self):
        if self.on_change is not None:
            self.on_change()

    def _check(self, models: List[ModelConfig], current: Optional[Dict[str, ModelManager]] = None):
        """Raises ServingError for a config that cannot be applied (before anything changes)."""
        names = [m.name for m in models]
        duplicate = sorted({n for n in names if names.count(n) > 1})
        if duplicate:
            raise ServingError(StatusCode.INVALID_ARGUMENT,
                               f"Illegal to list model {duplicate[0]} multiple times in config list")
        for model in models:
            manager = (current or {}).get(model.name)
            available = set(manager.loaded_versions()) if manager is not None else set()
            old = self._labels.get(model.name, {})
            for label, version in model.labels:
                # server_core.cc, UpdateModelVersionLabelMap: the flag allows a label
                # at an unavailable version only when it is new or unchanged.
                allowed = self.allow_unavailable_labels and old.get(label, version) == version
                if version not in available and not allowed:
                    raise ServingError(
                        StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {model.name}, which is not "
                        "currently available for inference"
                        + ("" if self.allow_unavailable_labels else
                           " (--allow_version_labels_for_unavailable_models lets a new label name a version "
                           "still to load)"),
                    )

    @staticmethod
    def _check_base_paths(models: List[ModelConfig], current: Dict[str, ModelManager]):
        """Raises ServingError for a new base path that cannot be listed (before anything changes)."""
        for model in models:
            manager = current.get(model.name)
            if manager is None or manager.base_path != model.base_path:
                try:
                    versions_on_disk(model.base_path)
                except OSError as error:
                    raise ServingError(StatusCode.INVALID_ARGUMENT, f"Could not list base path {model.base_path} "
                                       f"for servable {model.name} with error {error}") from None

    def start(self):
        """Loads every model (each version its policy names) before returning,
        waiting for a model with no version on disk until one appears, as
        TensorFlow Serving waits for every model before it opens its ports
        (server_core.cc, ConnectAdaptersToManagerAndAwaitModelLoads).

        Raises:
            RuntimeError: a model has versions on disk and none loaded, or none
                on disk and polling off (see `ModelManager.start`).
        """
        with self._lock:
            self._labels = {m.name: m.label_map for m in self._applied if m.labels}
        for model in self._applied:
            self._add(model)

    def _add(self, model: ModelConfig, joining: bool = False) -> ModelManager:
        manager = ModelManager(model.name, model.base_path, policy=model.policy, listener=self._changed,
                               **self._manager_kwargs)
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"model {model.name!r}: stopped while it loaded")
            self._managers[model.name] = manager
            self._retired.pop(model.name, None)
            if joining:
                self._joining.add(model.name)
        try:
            # A model of the start is waited for until it has a version, as in TensorFlow
            # Serving; one added by a reload with no version on disk is reported by the reload.
            manager.start(wait_for_a_version=not joining)
        except Exception:
            if self._stopped:
                raise
            manager.start_polling()  # it may load later; the start (or reload) reports the failure
            raise
        return manager

    def reload(self, models: List[ModelConfig]):
        """Moves to a new config: models added (loaded before this returns),
        removed (they stop taking requests at once, and are unloaded once the
        requests that hold them finish, without holding up the reload) or
        changed (policy, base path, labels). The config applied now does nothing.

        Raises:
            ServingError: the config fails a check (nothing has changed); or,
                UNKNOWN, models added did not become available (the config is
                applied all the same: they go on being polled), as
                server_core.cc's WaitUntilModelsAvailable reports it.
        """
        with self._reload_lock:
            with self._lock:
                if self._stopped:
                    raise ServingError(StatusCode.UNAVAILABLE, "the server is stopping")
                current = dict(self._managers)
            if models == self._applied:
                return
            # Labels are checked against the versions available now, before the new
            # config loads anything (as server_core.cc, ReloadConfig, orders it).
            self._check(models, current)
            self._check_base_paths(models, current)
            wanted = {m.name for m in models}
            removed = {name: manager for name, manager in current.items() if name not in wanted}
            with self._lock:
                for name, manager in removed.items():
                    del self._managers[name]
                    self._retired[name] = manager
                    self._joining.discard(name)
                self._labels = {m.name: m.label_map for m in models if m.labels}
                self._applied = list(models)
                self._draining = [t for t in self._draining if t.is_alive()]
                for name, manager in removed.items():
                    log.info("removing model %s", name)
                    # Unloaded once the requests that hold it finish (stop waits for them).
                    drain = threading.Thread(target=manager.stop, name=f"unload-{name}", daemon=True)
                    drain.start()
                    self._draining.append(drain)
            self._changed()  # models removed
            unavailable = []
            for model in models:
                manager = current.get(model.name)
                if manager is None:
                    log.info("adding model %s from %s", model.name, model.base_path)
                    try:
                        added = self._add(model, joining=True)
                    except Exception as error:
                        if self._stopped:
                            raise ServingError(StatusCode.UNAVAILABLE, "the server is stopping") from None
                        log.error("adding model %s: %s", model.name, error)  # polled on, NOT_FOUND meanwhile
                        added = self._managers[model.name]
                    if not added.loaded_versions():
                        unavailable.append(added)
                elif (model.base_path, model.policy) != (manager.base_path, manager.policy):
                    manager.reconfigure(model.base_path, model.policy)
                    try:
                        manager.poll()
                    except Exception:  # the directory changed since the check: its poller tries again
                        log.exception("model %s: polling %s failed", model.name, model.base_path)
            if unavailable:
                raise ServingError(StatusCode.UNKNOWN, f"{len(unavailable)} model(s) did not become available: {{"
                                   + "".join(f"{{{_why_unavailable(m)}}}, " for m in unavailable) + "}")

    def version_for_label(self, name: str, label: str) -> int:
        with self._lock:
            version = self._labels.get(name, {}).get(label)
        if version is None:
            # As server_core.cc, GetModelVersionForLabel.
            raise ServingError(StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
        return version

    def serve(self, model_name: str, version: Optional[int] = None, label: Optional[str] = None):
        """A context manager holding the version a request asks for: by number,
        by label, or the largest available."""
        if label is not None:
            version = self.version_for_label(model_name, label)
        with self._lock:
            manager = self._managers.get(model_name)
        if manager is None:
            what = f"Latest({model_name})" if version is None else f"Specific({model_name}, {version})"
            raise ServingError(StatusCode.NOT_FOUND, f"Servable not found for request: {what}")
        return manager.serve(version)

    def status(self, model_name: str, version: Optional[int] = None) -> List[tuple]:
        """[(version, state, error message)] of a model's versions, newest first;
        a removed model's as its stopped manager has them (END once unloaded)."""
        with self._lock:
            manager = self._managers.get(model_name) or self._retired.get(model_name)
        if manager is None:
            raise ServingError(StatusCode.NOT_FOUND, f"Could not find any versions of model {model_name}")
        return manager.status(version)

    def available_all(self) -> Dict[str, List[int]]:
        """{model name: its available versions} for every configured model."""
        with self._lock:
            managers = dict(self._managers)
        return {name: manager.loaded_versions() for name, manager in managers.items()}

    def stop(self):
        """Stops every model (each waits for the requests that hold it), and
        waits for the removed models still draining."""
        with self._lock:
            self._stopped = True
            managers = list(self._managers.values())
            draining = list(self._draining)
        for manager in managers:
            manager.stop()
        for drain in draining:
            drain.join()
