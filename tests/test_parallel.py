"""shard_map, pmap and one device on the same global batch end with the same parameters.

Runs in a subprocess (tests/engine_worker.py) because 4 CPU devices must be configured
before JAX initialises; the single-device run on the whole global batch is the reference.
Trainable BatchNorm (layer3, layer4, frozen_depth=3) uses cross-device statistics.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "engine_worker.py")


def _worst(d, tag: str, kinds=("params", "batch_stats")) -> tuple[float, str]:
    ref = {k.split(":", 1)[1]: d[k] for k in d.files if k.split(":")[0] == "none" and k.split(":")[1] in kinds}
    return max((float(np.abs(d[f"{tag}:{k}"] - v).max()), k) for k, v in ref.items())


@pytest.mark.slow
def test_shard_map_pmap_and_single_device_agree(tmp_path):
    out = tmp_path / "parallel.npz"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, WORKER, "parallel", "--out", str(out), "--steps", "3",
                           "--frozen-depth", "3", "--lr", "0.01"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = np.load(out)
    assert int(d["none:devices"]) == 1 and int(d["shard_map:devices"]) == int(d["pmap:devices"]) == 4
    for tag in ("shard_map", "pmap"):
        err, where = _worst(d, tag)
        print(f"\n{tag}: max |param or BN stat - single device| = {err:.2e} ({where}); "
              f"params only: {_worst(d, tag, ('params',))[0]:.2e}")
        assert err <= 1e-5, (tag, where, err)
        np.testing.assert_allclose(d[f"{tag}:losses"], d["none:losses"], rtol=1e-5)
        np.testing.assert_allclose(d[f"{tag}:eval_loss_sum"], d["none:eval_loss_sum"], rtol=1e-5)
    # Without synced BatchNorm each device normalises with its own 2 examples: a different model.
    err, _ = _worst(d, "shard_map_nosync")
    print(f"shard_map without sync_bn differs by {err:.2e}")
    assert err > 1e-2
