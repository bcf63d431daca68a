"""The step benchmark runs tiny on CPU and reports what it claims (no timing assertions); the torch peer's
stages are the torchvision model's own forward; the scripts are thin and run without TensorFlow."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tl_jax.bench import step, torch_peer
from tl_jax.models import registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["scripts/benchmark.py", "scripts/benchmark_input.py"]


def test_benchmark_tiny_with_torch_peer(tmp_path):
    out = tmp_path / "bench.json"
    results = step.run("resnet18", "torchvision", [0, 4], batch=2, resolution=32, steps=1, chunks=1,
                       dtype="float32", num_classes=1000, peer="torch", out=str(out), echo=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    full, frozen = results
    for r in results:
        assert r["img_s"] > 0 and r["peer"]["img_s"] > 0
        assert r["ratio_vs_torch"] == r["img_s"] / r["peer"]["img_s"]
        # Both sides' precision sits next to the ratio.
        assert r["dtype"] == r["peer"]["dtype"] == "float32" and r["peer"]["autocast"] is False
        # SGD with momentum keeps one float32 trace per trainable parameter (plus the schedule's
        # step counters), none for frozen ones.
        assert 0 <= r["opt_state_bytes"] - 4 * r["trainable_params"] <= 64
    assert full["frozen_params"] == 0
    assert frozen["trainable_params"] < full["trainable_params"]
    assert frozen["trainable_params"] + frozen["frozen_params"] == full["trainable_params"]
    # XLA drops the backward pass of the frozen stem..layer3.
    assert 0 < frozen["convolutions"] < full["convolutions"]
    assert frozen["speedup_vs_full"] == frozen["img_s"] / full["img_s"]


def test_torch_peer_runs_bfloat16_under_autocast_on_cpu():
    r = torch_peer.time_torch_step("resnet18", 5, batch=2, resolution=32, steps=1, warmup=1, num_classes=10,
                                   dtype="bfloat16")
    assert r["dtype"] == "bfloat16" and r["autocast"] is True and r["img_s"] > 0


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("vgg11", 32), ("inception_v3", 75)])
def test_torch_stages_are_the_torchvision_forward(arch, size):
    torch.manual_seed(0)
    model = torch_peer.torchvision_model(arch, num_classes=10).eval()
    stages = torch_peer.stages(model, registry.info(arch, "torchvision").torch_stages)
    assert len(stages) == len(registry.info(arch, "torchvision").stage_names)
    # Every parameter belongs to exactly one stage, so frozen + trainable stages cover the model.
    ids = [id(p) for s in stages for p in s.parameters()]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        h = x
        for s in stages:
            h = s(h)
        assert torch.equal(h, model(x))


def test_stage_expressions():
    model = torch_peer.torchvision_model("vgg11", num_classes=10)
    assert torch_peer.module(model, "classifier[6]") is model.classifier[6]
    assert list(torch_peer.module(model, "features[0:3]")) == list(model.features)[:3]
    assert isinstance(torch_peer.module(model, "flatten"), torch.nn.Flatten)
    for bad in ("nothing", "features[]", "features(1)"):
        with pytest.raises(ValueError):
            torch_peer.module(model, bad)


def test_scripts_help():
    for script in SCRIPTS:
        r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "flags:" in r.stdout and "python " + script in r.stdout


def test_step_benchmark_runs_without_tensorflow():
    """The GPU machine has no TensorFlow, tfds or ml_collections: the step benchmark and its script need none."""
    code = ("import runpy, sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'ml_collections'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import tl_jax.bench.step, tl_jax.bench.torch_peer, tl_jax.experiment.cli\n"
            "sys.argv = ['scripts/benchmark.py', '--help']\n"
            "try:\n"
            "    runpy.run_path('scripts/benchmark.py', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
