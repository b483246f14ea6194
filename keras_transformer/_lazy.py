"""Package attributes loaded on first use (PEP 562), for packages whose
modules need TensorFlow while others do not."""

import importlib
import importlib.util


def lazy_attributes(package: str, names: dict, submodules: tuple):
    """`(__getattr__, __dir__)` for `package`: `names` maps an attribute to
    the submodule that defines it; `submodules` load as attributes too."""

    def __getattr__(name):
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(names) | set(submodules))

    return __getattr__, __dir__


def public_names(names: dict, tensorflow_modules: tuple) -> list:
    """`__all__` for a lazy package: every name of `names`, less those whose
    submodule (one of `tensorflow_modules`) needs TensorFlow when TensorFlow
    is not installed, so `from package import *` works on every backend."""
    if importlib.util.find_spec("tensorflow") is not None:
        return sorted(names)
    return sorted(name for name, module in names.items() if module not in tensorflow_modules)
