"""Export to torchvision: the converted reference fine-tuned a few steps, written back, loaded by the real
torchvision with ``strict=True`` and compared in float32 eval mode (every stage's output, ``return_stages``
against forward hooks, and the logits, to 1e-4 relative); an unmodified conversion writes back the reference
file's tensors exactly; frozen stages come back bit for bit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references as R
from tl_jax.models import registry
from tl_jax.weights import export, inverse, maps
from tl_jax.weights.torchvision import convert_torchvision

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 7
# arch, input size, frozen depth, state_dict prefixes of the frozen stages (never touched by training)
CASES = [("resnet18", 64, 2, ("conv1.", "bn1.", "layer1.")),
         ("vgg11_bn", 32, 2, ("features.0.", "features.1.", "features.4.", "features.5.")),
         ("inception_v3", 75, 1, ("Conv2d_",))]


def finetune(model, variables, x, steps: int = 2, lr: float = 0.05):
    """A few SGD steps in training mode (BatchNorm on batch statistics, dropout on): params and
    statistics of every trainable stage move; frozen ones cannot (stop-gradient, running averages)."""
    labels = jnp.arange(x.shape[0]) % CLASSES

    @jax.jit
    def step(v, key):
        def loss(params):
            logits, state = model.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"],
                                        rngs={"dropout": key})
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), labels]), state
        grads, state = jax.grad(loss, has_aux=True)(v["params"])
        params = jax.tree.map(lambda p, g: p - lr * g, v["params"], grads)
        return {**v, "params": params, **({"batch_stats": state["batch_stats"]} if "batch_stats" in state else {})}

    for i in range(steps):
        variables = step(variables, jax.random.key(i))
    return jax.tree.map(np.asarray, variables)


def torch_model(info: dict):
    """The model that FILE.json says loads the file."""
    kwargs = info["framework_model"]["kwargs"]
    return torchvision.models.get_model(info["arch"], **kwargs).eval()


def torch_stage_outputs(net, torch_stages, x: np.ndarray) -> list[np.ndarray]:
    """``net(x)``'s output of each stage (the registry's torchvision modules of that stage: the last one's
    output, ``features[0:5]`` meaning ``features[4]``), NCHW turned NHWC; the last is the logits."""
    caught, hooks = [], []
    for modules in torch_stages:
        last = modules[-1]
        if "[" in last:
            name, index = last[:-1].split("[")
            module = getattr(net, name)[int(index.split(":")[-1]) - (1 if ":" in index else 0)]
        else:
            module = getattr(net, last)
        hooks.append(module.register_forward_hook(lambda m, i, out, k=len(hooks): caught.append((k, out.clone()))))
    try:
        logits = R.torch_forward(net, x)
    finally:
        for h in hooks:
            h.remove()
    outs = [a.numpy() for _, a in sorted(caught, key=lambda t: t[0])]
    assert len(outs) == len(torch_stages) and np.array_equal(outs[-1], logits)
    return [a.transpose(0, 2, 3, 1) if a.ndim == 4 else a for a in outs]


@pytest.mark.parametrize("arch,size,frozen,frozen_keys", CASES, ids=[c[0] for c in CASES])
def test_finetuned_export_loads_strictly_into_torchvision(arch, size, frozen, frozen_keys, tmp_path):
    path = str(tmp_path / "ref.pth")
    kwargs = {"init_weights": False, "aux_logits": False} if arch == "inception_v3" else {}
    R.torchvision_reference(arch, path, seed=0, num_classes=CLASSES, **kwargs)
    original = torch.load(path, weights_only=True)
    variables = convert_torchvision(arch, path)

    # Unmodified: the table backwards gives the file's own tensors, bit for bit, and no others.
    back = export.torchvision_state_dict(arch, "torchvision", variables)
    assert list(back) and set(back) == set(original)
    for k, t in original.items():
        assert np.array_equal(back[k], t.numpy()), k

    model = registry.create(arch, "torchvision", num_classes=CLASSES,
                            frozen_stages=registry.model_config(arch, "torchvision").stage_names[:frozen])
    x = np.random.RandomState(1).randn(4, size, size, 3).astype(np.float32)
    tuned = finetune(model, variables, x)
    info = export.export_variables(arch, "torchvision", tuned, "torchvision", tmp_path / "tuned.pth",
                                   metadata={"class_names": [f"c{i}" for i in range(CLASSES)]})
    assert json.loads((tmp_path / "tuned.pth.json").read_text()) == info
    state = torch.load(tmp_path / "tuned.pth", weights_only=True)
    net = torch_model(info)
    net.load_state_dict(state, strict=True)
    # Every stage's output (under jit, with frozen stages) against torchvision's, caught by forward hooks.
    stages = jax.jit(lambda v, x: model.apply(v, x, train=False, return_stages=True))(tuned, x)
    refs = torch_stage_outputs(net, registry.model_config(arch, "torchvision").torch_stages, x)
    assert list(stages) == list(model.stage_names) and len(refs) == len(stages)
    errors = [R.assert_parity(np.asarray(out), ref, f"{arch} fine-tuned, exported: stage {name}")
              for (name, out), ref in zip(stages.items(), refs)]
    print(f"\n{arch} -> torchvision: worst stage/logits error {max(errors):.2g}")

    frozen_names = [k for k in original if k.startswith(frozen_keys)]
    moved = [k for k in original if k not in frozen_names and not k.endswith("num_batches_tracked")
             and not np.array_equal(state[k].numpy(), original[k].numpy())]
    assert frozen_names and all(torch.equal(state[k], original[k]) for k in frozen_names)
    assert len(moved) > len(original) // 4, "fine-tuning moved too little to test the export"


def test_safetensors_of_a_weights_directory_has_the_file_tensors_and_loads_strictly(tmp_path):
    """``tl_jax.export_weights`` on what convert_weights.py wrote: the reference file's tensors, exactly."""
    from safetensors.numpy import load_file

    import tl_jax
    from tl_jax.weights import importer

    path = str(tmp_path / "ref.pth")
    R.torchvision_reference("resnet18", path, seed=3, num_classes=CLASSES)
    importer.convert_weights("resnet18", "torchvision", tmp_path / "store", path)
    info = tl_jax.export_weights(tmp_path / "store", "safetensors", tmp_path / "m.safetensors")
    assert info["num_classes"] == CLASSES and info["preprocessing"]["name"] == "torchvision"
    loaded = load_file(str(tmp_path / "m.safetensors"))
    original = torch.load(path, weights_only=True)
    assert set(loaded) == set(original)
    assert all(np.array_equal(loaded[k], v.numpy()) for k, v in original.items())
    torchvision.models.get_model("resnet18", num_classes=CLASSES).load_state_dict(
        {k: torch.from_numpy(v) for k, v in loaded.items()}, strict=True)


@pytest.mark.parametrize("arch,source", [("resnet50", "timm"), ("vgg16_bn", "timm"), ("resnet50", "hf"),
                                         ("inception_v3", "timm")])
def test_other_publishers_of_the_same_architecture_export_to_torchvision_keys(arch, source):
    """Names only (no forward): every variable gets torchvision's name, and exactly torchvision's names."""
    info = registry.model_config(arch, source)
    template = jax.eval_shape(lambda: info.build(num_classes=CLASSES).init(
        jax.random.key(0), jnp.zeros((1, 75, 75, 3))))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(template))
    keys = export.torchvision_state_dict(arch, source, variables)
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    expected = torchvision.models.get_model(arch, num_classes=CLASSES, **kwargs).state_dict()
    assert set(keys) == set(expected)
    assert all(keys[k].shape == tuple(expected[k].shape) for k in keys)


@pytest.mark.parametrize("arch,source,to,needle", [
    ("resnet50", "keras", "torchvision", "another architecture"),
    ("resnet18", "torchvision", "keras", "keras publishes no resnet18"),
    ("vgg16_bn", "torchvision", "keras", "keras publishes no vgg16_bn"),
    ("inception_v3", "torchvision", "keras", "another architecture"),
    ("resnet18", "torchvision", "onnx", "unknown export target"),
])
def test_no_target_layout_is_refused_by_name(arch, source, to, needle):
    with pytest.raises(export.ExportError, match=needle):
        export.target_config(arch, source, to)


def test_a_rule_that_cannot_run_backwards_is_refused():
    with pytest.raises(inverse.ExportError, match="cannot run backwards"):
        inverse.invert([(r"layer\d\.weight", "params/x/kernel", maps.family("resnet").conv)])


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_weights.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_script_exports_a_training_run_and_refuses_bad_input_in_one_line(tmp_path):
    """A real run of scripts/train.py's loop (ResNet-18, 32 px, stem..layer3 frozen, 2 steps) exported by the
    script; bad input gives one line, exit 1 and no file."""
    from tl_jax.experiment import config as config_lib, restore, run

    tiny = {"data.source": "synthetic", "data.train_split": "train", "data.eval_split": "test",
            "data.num_examples": 16, "data.image_size": 32, "model.arch": "resnet18", "model.dtype": "float32",
            "batch_size": 8, "num_steps": 2, "log_every_steps": 1, "checkpoint_every_steps": 2,
            "eval_every_epochs": 0, "freeze.frozen_depth": 4, "parallel": "none"}
    work = str(tmp_path / "run")
    run.train(config_lib.load_config(os.path.join(ROOT, "configs", "default.py"), tiny), work, progress=False,
              echo=False)
    out = tmp_path / "out" / "run.pth"
    proc = _script("--workdir", work, "--checkpoint", "last", "--to", "torchvision", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "exported resnet18 (torchvision step 2, 10 classes)" in proc.stdout
    info = json.loads((tmp_path / "out" / "run.pth.json").read_text())
    r = restore.restore_run(work)
    assert info["class_names"] == r.info["class_names"] and info["checkpoint_step"] == 2
    assert info["preprocessing"]["crop_size"] == 32 and info["target"] == "torchvision"
    net = torch_model(info)
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    R.assert_parity(np.asarray(r.model.apply(r.variables, x)), R.torch_forward(net, x), "exported run")

    before = out.read_bytes()
    bad = [(["--to", "keras", "--output", str(tmp_path / "k.weights.h5")], "keras publishes no resnet18"),
           (["--to", "torchvision", "--checkpoint", "7", "--output", str(tmp_path / "s.pth")],
            "no checkpoint at step 7"),
           (["--to", "torchvision", "--output", str(out)], "already exists; pass --overwrite"),
           (["--to", "safetensors", "--output", str(tmp_path / "x.pth")], "writes .safetensors files")]
    for args, needle in bad:
        proc = _script("--workdir", work, *args)
        errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(errors) == 1 and needle in errors[0], (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.pth", "run.pth.json"]
    assert out.read_bytes() == before
