"""pyproject.toml: one version string, and console scripts that start."""

import importlib
import importlib.metadata
import os
import tomllib

import pytest

import keras_transformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]


def test_the_installed_version_is_the_package_version():
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    assert importlib.metadata.version(PROJECT["name"]) == keras_transformer.__version__


@pytest.mark.parametrize("name", sorted(PROJECT["scripts"]))
def test_each_console_script_answers_help(name, capsys):
    module, _, function = PROJECT["scripts"][name].partition(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out
