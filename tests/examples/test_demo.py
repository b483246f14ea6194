"""`make demo` end to end on a small run: train, export, serve, translate over gRPC.

The demo's own quality gate needs ten epochs (minutes); this run trains one
short epoch, so it checks the path (vocabulary, `model.fit`, the SavedModel,
the model server with serving/batching.config, the client's requests of at
most its max_batch_size), not the translations.
"""

import os
import re
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_demo_runs_end_to_end_through_the_model_server(tmp_path):
    # A session of its own: on a timeout the demo and its model server are killed together.
    demo = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "demo.py"), "--run-dir", str(tmp_path / "demo"),
         "--train-size", "600", "--test-size", "40", "--epochs", "1", "--min-accuracy", "0", "--no-require-shown"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = demo.communicate(timeout=420)  # under pytest's own timeout (600 s)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 0, out[-3000:]
    # 40 sentences: more than one request of the server's max_batch_size (32).
    assert "translating 40 held-out numbers over gRPC" in out
    assert re.search(r"\d+/40 held-out numbers translated exactly", out), out[-2000:]
    assert len(re.findall(r"^  \S.* -> .*\((log p -?\d+\.\d+)\)$", out, re.M)) == 8  # the examples shown
    assert os.path.exists(tmp_path / "demo" / "export" / "1" / "saved_model.pb")
    assert "demo passed" in out
