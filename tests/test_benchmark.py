"""scripts/benchmark.py runs tiny on CPU and reports what it claims (no timing assertions)."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

import benchmark  # noqa: E402


def test_benchmark_tiny_with_torch_peer(tmp_path):
    out = tmp_path / "bench.json"
    results = benchmark.main(["--arch", "resnet18", "--depths", "0,4", "--batch", "2", "--resolution", "32",
                              "--steps", "1", "--chunks", "1", "--dtype", "float32", "--peer", "torch",
                              "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    full, frozen = results
    for r in results:
        assert r["img_s"] > 0 and r["peer"]["img_s"] > 0
        assert r["ratio_vs_torch"] == r["img_s"] / r["peer"]["img_s"]
        # SGD with momentum keeps one float32 trace per trainable parameter (plus the schedule's
        # step counters), none for frozen ones.
        assert 0 <= r["opt_state_bytes"] - 4 * r["trainable_params"] <= 64
    assert full["frozen_params"] == 0
    assert frozen["trainable_params"] < full["trainable_params"]
    assert frozen["trainable_params"] + frozen["frozen_params"] == full["trainable_params"]
