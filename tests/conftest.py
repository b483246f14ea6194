import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Every test starts from the same seed and the float32 policy."""
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def multi30k_dir():
    """Multi30k task-1 data: $MULTI30K_DIR, or ../shared/data/multi30k beside the project."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("MULTI30K_DIR", os.path.join(root, "..", "shared", "data", "multi30k"))
    if not os.path.isfile(os.path.join(path, "val.lc.norm.tok.en")):
        pytest.fail(f"Multi30k data not found at {path}; set MULTI30K_DIR to its directory")
    return path
