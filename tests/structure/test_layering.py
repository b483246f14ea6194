"""The import graph: each part of the package imports only the parts below it.

    text < layers < models < decoding, data < training < export < recipes

`text` (reserved tokens, Moses-style normalization) is core TensorFlow only,
so decoding and the export never load tensorflow-text; `data` (the tokenizer
learned with tensorflow-text, tf.data pipelines) and `decoding` are side by
side and do not import each other.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "keras_transformer")
LEVEL = {"text": 0, "layers": 1, "models": 2, "decoding": 3, "data": 3, "training": 4, "export": 5, "recipes": 6}


def _imports(path):
    """(line, imported keras_transformer subpackage) for every import in a file, at any depth."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "keras_transformer" and len(parts) > 1 and parts[1] in LEVEL:
                yield node.lineno, parts[1]


def _package_files():
    for sub in LEVEL:
        for dirpath, _, files in os.walk(os.path.join(PACKAGE, sub)):
            for name in files:
                if name.endswith(".py"):
                    yield sub, os.path.join(dirpath, name)


def test_every_part_imports_only_downward():
    upward = []
    for sub, path in _package_files():
        for line, target in _imports(path):
            if target != sub and LEVEL[target] >= LEVEL[sub]:
                upward.append(f"{os.path.relpath(path, ROOT)}:{line} ({sub}) imports {target}")
    assert not upward, "\n".join(upward)


def test_the_layering_check_sees_an_upward_import(tmp_path):
    # The check above must be able to fail: a decoding module importing data is caught.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from keras_transformer.data.tokenizer import WordPieceTokenizer\n")
    assert list(_imports(str(bad))) == [(2, "data"), (2, "data")]


@pytest.mark.parametrize("modules", [
    ["keras_transformer.decoding"],
    ["keras_transformer.export.saved_model", "keras_transformer.export.core_tokenizer",
     "keras_transformer.export.__main__"],
    ["keras_transformer.models", "keras_transformer.text"],
])
def test_decoding_and_export_never_load_tensorflow_text(modules):
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow_text')\n"
        "print(loaded[:3])\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, f"{modules} loaded tensorflow_text: {result.stdout}{result.stderr[-2000:]}"


def test_star_imports_work_without_tensorflow_and_its_parts_say_what_they_need():
    # On a JAX machine with no TensorFlow: `from package import *` takes every
    # name that can load there (it used to fail on the first TensorFlow one),
    # and a TensorFlow-only name, asked for, names what is missing.
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "from keras_transformer.data import *\n"
        "from keras_transformer.decoding import *\n"
        "from keras_transformer.text import *\n"
        "from keras_transformer.training import *\n"
        "assert callable(train) and callable(greedy_decode) and TokenStream and END_ID == 3 and MaskedCrossEntropy\n"
        "import keras_transformer.decoding as decoding, keras_transformer.training as training\n"
        "assert 'Translator' not in decoding.__all__ and 'make_strategy' not in training.__all__\n"
        "try:\n"
        "    decoding.Translator\n"
        "except ImportError as error:\n"
        "    assert 'tensorflow' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('Translator loaded without TensorFlow')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
    import keras_transformer.decoding as decoding

    assert "Translator" in decoding.__all__  # with TensorFlow, every name
