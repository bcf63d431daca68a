"""Two processes x 2 CPU devices (jax.distributed over loopback) == one process x 4 devices.

Both run ``tl_jax.loop.fit`` (shard_map, synced BatchNorm, eval, checkpoints written by
both processes) through tests/engine_worker.py; each process feeds its half of every
global batch via ``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "engine_worker.py")
ARGS = ["fit", "--steps", "4", "--frozen-depth", "4", "--optim", "sgd", "--lr", "0.01",
        "--checkpoint-every", "2", "--eval-every", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    one = subprocess.Popen([sys.executable, WORKER, *ARGS, "--devices", "4", "--out", str(tmp_path / "one.npz"),
                            "--workdir", str(tmp_path / "one")], env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    two = [subprocess.Popen([sys.executable, WORKER, *ARGS, "--devices", "2", "--out", str(tmp_path / "two.npz"),
                             "--workdir", str(tmp_path / "two"), "--coordinator", coordinator,
                             "--num-processes", "2", "--process-id", str(i)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for p in (one, *two):
            out, _ = p.communicate(timeout=400)
            logs.append(out)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in (one, *two):
            if p.poll() is None:
                p.kill()
    assert '"processes": 2' in logs[1] and '"devices": 4' in logs[1]
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints"))[:2] == ["2", "4"]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(a.files) == sorted(b.files)
    err, where = max((float(np.abs(a[k] - b[k]).max()), k) for k in a.files
                     if k.startswith(("params:", "batch_stats:")))
    print(f"\n2 processes x 2 devices vs 1 x 4: max |difference| = {err:.2e} ({where})")
    assert err <= 1e-5
