"""The step benchmark runs tiny on CPU and reports what it claims (no timing assertions); the torch peer's
stages are the torchvision model's own forward; the torch.compile peer runs or says in one line why not;
folding frozen BatchNorm is recorded and visible in the compiled step; the scripts are thin and run
without TensorFlow."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tl_jax.bench import step_speed, torch_peer
from tl_jax.models import registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["scripts/benchmark.py", "scripts/benchmark_input.py"]


def test_benchmark_tiny_with_torch_peer(tmp_path):
    out = tmp_path / "bench.json"
    results = step_speed.run("resnet18", "torchvision", [0, 4], batch=2, resolution=32, steps=1, chunks=1,
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
        assert r["fold_bn"] is True and "peer_compile" not in r and "ratio_vs_torch_compile" not in r
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
    stages = torch_peer.stages(model, registry.model_config(arch, "torchvision").torch_stages)
    assert len(stages) == len(registry.model_config(arch, "torchvision").stage_names)
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
            "import tl_jax.bench.step_speed, tl_jax.bench.torch_peer, tl_jax.experiment.cli\n"
            "sys.argv = ['scripts/benchmark.py', '--help']\n"
            "try:\n"
            "    runpy.run_path('scripts/benchmark.py', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_fold_bn_is_recorded_and_removes_the_activation_scale():
    """Head only (every BatchNorm frozen): folded, no activation-shaped multiply is left in the compiled
    step; unfolded, each frozen BatchNorm keeps its per-channel scale over the activations."""
    kw = dict(batch=2, resolution=32, steps=1, chunks=1, dtype="float32", num_classes=10, echo=False)
    (on,) = step_speed.run("resnet18", "torchvision", [5], fold_bn=True, **kw)
    (off,) = step_speed.run("resnet18", "torchvision", [5], fold_bn=False, **kw)
    assert on["fold_bn"] is True and off["fold_bn"] is False
    assert on["activation_multiplies"] == 0 < off["activation_multiplies"]
    # Folding merges BatchNorm into the convolutions; it removes none of them.
    assert on["convolutions"] == off["convolutions"] > 0
    assert on["trainable_params"] == off["trainable_params"]


def test_fold_bn_reaches_the_model(monkeypatch):
    seen = []
    build = registry.ModelConfig.build
    monkeypatch.setattr(registry.ModelConfig, "build", lambda self, **kw: seen.append(kw) or build(self, **kw))
    step_speed.run("resnet18", "torchvision", [5], batch=2, resolution=32, steps=1, chunks=1, dtype="float32",
                   num_classes=10, fold_bn=False, echo=False)
    assert [kw["fold_frozen_bn"] for kw in seen if "fold_frozen_bn" in kw] == [False]


def test_count_activation_multiplies():
    hlo = """
  %multiply.3 = f32[8,16,16,64]{3,2,1,0} multiply(f32[8,16,16,64]{3,2,1,0} %a, f32[8,16,16,64]{3,2,1,0} %b)
  multiply.4 = bf16[8,7,7,2048]{3,2,1,0} multiply(bf16[8,7,7,2048]{3,2,1,0} p0, bf16[8,7,7,2048]{3,2,1,0} p1)
  %multiply.5 = f32[3,3,64,64]{3,2,1,0} multiply(f32[3,3,64,64]{3,2,1,0} %k, f32[3,3,64,64]{3,2,1,0} %s)
  %multiply.6 = f32[8,64]{1,0} multiply(f32[8,64]{1,0} %c, f32[8,64]{1,0} %d)
  %add.7 = f32[8,16,16,64]{3,2,1,0} add(f32[8,16,16,64]{3,2,1,0} %multiply.3, f32[8,16,16,64]{3,2,1,0} %e)
"""
    assert step_speed.count_activation_multiplies(hlo, 8) == 2
    assert step_speed.count_activation_multiplies(hlo, 4) == 0


def test_peer_list_parsing():
    assert step_speed.parse_peers("") == ()
    assert step_speed.parse_peers("torch") == ("torch",)
    assert step_speed.parse_peers("torch, torch_compile,torch") == ("torch", "torch_compile")
    assert step_speed.parse_peers(["torch_compile", "torch"]) == ("torch_compile", "torch")
    with pytest.raises(ValueError, match="unknown peer 'jax'"):
        step_speed.parse_peers("torch,jax")
    # An unknown peer fails before anything compiles.
    with pytest.raises(ValueError, match="unknown peer"):
        step_speed.run("resnet18", "torchvision", [5], batch=2, resolution=32, steps=1, chunks=1,
                       dtype="float32", peer="torch,eager", echo=False)


def test_peer_flag_takes_a_comma_list():
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--peer", "torch,jax"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--peer takes a comma list of torch, torch_compile" in r.stderr


def test_both_peers_fill_their_own_fields(monkeypatch):
    """Each peer lands in its field with its ratio; a peer that could not run leaves its ratio None."""
    calls = []

    def fake(arch, depth, *, compiled=False, **kw):
        calls.append(compiled)
        if compiled:
            return {"peer": "torch_compile", "error": "torch.compile failed on cpu: RuntimeError: no compiler"}
        return {"peer": "torch", "img_s": 4.0, "step_ms": 500.0}

    monkeypatch.setattr(torch_peer, "time_torch_step", fake)
    (r,) = step_speed.run("resnet18", "torchvision", [5], batch=2, resolution=32, steps=1, chunks=1,
                          dtype="float32", num_classes=10, peer="torch,torch_compile", echo=False)
    assert calls == [False, True]
    assert r["peer"]["peer"] == "torch" and r["ratio_vs_torch"] == r["img_s"] / 4.0
    assert r["peer_compile"]["error"].startswith("torch.compile failed") and r["ratio_vs_torch_compile"] is None


def test_torch_compile_failure_is_one_line_in_the_record(monkeypatch):
    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    r = torch_peer.time_torch_step("resnet18", 5, batch=2, resolution=32, steps=1, warmup=1, num_classes=10,
                                   dtype="float32", compiled=True)
    assert r["peer"] == "torch_compile" and "img_s" not in r and "compile_s" not in r
    assert r["error"] == ("torch.compile failed on cpu: RuntimeError: InvalidCxxCompiler: "
                          "No working C++ compiler found")


def test_torch_compile_peer_on_cpu():
    """The real torch.compile peer (inductor + the C++ compiler on CPU): compile time apart from img/s.
    Inductor's probe of the SIMD instruction sets (a test build per set the CPU reports, 7 of the 25 s here
    with a cold cache, as CI has) is skipped: the kernels are built for the best set the CPU reports."""
    import torch._inductor.config as inductor

    t = time.perf_counter()
    with inductor.patch({"cpp.vec_isa_ok": True}):
        r = torch_peer.time_torch_step("resnet18", 5, batch=2, resolution=32, steps=1, warmup=2, num_classes=10,
                                       dtype="float32", compiled=True)
    print(f"\ntorch.compile peer, ResNet-18 head only, CPU: {time.perf_counter() - t:.1f} s, {r}")
    assert "error" not in r, r["error"]
    assert r["peer"] == "torch_compile" and r["compile_mode"] == "default" and r["warmup_steps"] == 2
    assert r["img_s"] > 0 and r["compile_s"] > 0 and r["autocast"] is False


def test_gpu_script_dry_run_sizes(tmp_path):
    """benchmarks/gpu.sh takes its sizes from the environment; a stub python3 records what it would run."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python3").write_text('#!/bin/sh\necho "$@" >> "$LOG"\n')
    (stub / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "LOG": str(tmp_path / "log"),
           "BATCH": "2", "RESOLUTION": "32", "STEPS": "1", "CHUNKS": "1"}
    r = subprocess.run(["bash", "benchmarks/gpu.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    runs = (tmp_path / "log").read_text().splitlines()
    assert len(runs) == 3 and all("--batch 2 --resolution 32 --dtype bfloat16 --steps 1 --chunks 1" in c for c in runs)
    assert "--arch resnet50 --depths 0,4,5" in runs[0] and "--fold_bn --peer torch,torch_compile" in runs[0]
    assert "--arch vgg16 --depths 0,5" in runs[1] and "--fold_bn --peer torch,torch_compile" in runs[1]
    assert "--arch resnet50" in runs[2] and "--nofold_bn" in runs[2] and runs[2].endswith("resnet50_nofold.json")
