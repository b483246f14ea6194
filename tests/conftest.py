import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_transformer.data import read_parallel  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Every test starts from the same seed and the float32 policy."""
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


# The Multi30k files the tests read: raw and lowercased-tokenized, in the three languages.
MULTI30K_FILES = [
    name
    for split in ("train", "val", "test_2016_flickr")
    for lang in ("en", "de", "fr")
    for name in (f"{split}.{lang}.gz", f"{split}.lc.norm.tok.{lang}")
]


@pytest.fixture(scope="session")
def multi30k_dir():
    """Multi30k task-1 data: $MULTI30K_DIR, or ../shared/data/multi30k beside the project."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("MULTI30K_DIR", os.path.join(root, "..", "shared", "data", "multi30k"))
    missing = [name for name in MULTI30K_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        message = (
            f"Multi30k task-1 data not found at {os.path.abspath(path)} (missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}). Put the files of the multi30k/dataset repository's "
            "data/task1 folder (raw/*.gz and tok/*.lc.norm.tok.*) in one directory, beside the project as "
            "../shared/data/multi30k or anywhere with MULTI30K_DIR=/path/to/it."
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " Under CI the data must be there.")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def multi30k_train_slice(multi30k_dir):
    """The first 3,000 English-German training pairs (lowercased, tokenized)."""
    en, de = read_parallel(
        os.path.join(multi30k_dir, "train.lc.norm.tok.en"),
        os.path.join(multi30k_dir, "train.lc.norm.tok.de"),
    )
    return en[:3000], de[:3000]


@pytest.fixture(scope="session")
def multi30k_tokenizer(multi30k_train_slice):
    """A joint vocabulary learned on the training slice."""
    en, de = multi30k_train_slice
    from keras_transformer.data import WordPieceTokenizer  # tensorflow-text: loaded only where needed

    return WordPieceTokenizer.learn(en + de, vocab_size=2000, min_count=2)


def pytest_collection_modifyitems(config, items):
    # Tests of TensorFlow-only parts show as skipped on another backend
    # (make test's JAX pass), never as passed.
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow's backend only (this run: {backend})")
    for item in items:
        if item.get_closest_marker("tensorflow_only"):
            item.add_marker(skip)
