"""Package attributes loaded on first use (PEP 562), for packages whose
modules need TensorFlow while others do not."""

import importlib


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
