"""Without the Multi30k data, a user's `make test` says where to put it; CI fails."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One test that reads Multi30k through the `multi30k_dir` fixture.
A_DATA_TEST = "tests/data/test_moses.py::test_tokenize_matches_the_lc_norm_tok_files"


def _pytest(tmp_path, ci):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(MULTI30K_DIR=str(tmp_path / "nowhere"), TF_CPP_MIN_LOG_LEVEL="3")
    if ci:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", "-p", "no:xdist", A_DATA_TEST],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


# pytest.fail in a fixture is reported as an error in the test's setup.
@pytest.mark.parametrize("ci, outcome, code", [(None, "3 skipped", 0), ("true", "3 errors", 1)])
def test_missing_multi30k_skips_with_directions_and_fails_under_ci(tmp_path, ci, outcome, code):
    result = _pytest(tmp_path, ci)
    out = result.stdout
    assert result.returncode == code, out[-3000:]
    assert outcome in out, out[-3000:]
    assert "Multi30k task-1 data not found at" in out and "MULTI30K_DIR=/path/to/it" in out, out[-3000:]
