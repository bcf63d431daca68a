"""timm and transformers files convert exactly (1e-4 parity_error), as the torchvision / legacy Keras ones do.

Each reference is built with random weights (and randomised BatchNorm statistics) by the real
library, saved in its real format (timm: ``model.safetensors`` as on the Hub, or a ``.pth``;
transformers: ``save_pretrained``), converted through the
converter's public path (``importer.convert_weights``, the whole body of scripts/convert_weights.py;
one run of each source through the script itself) and loaded with ``load_pretrained``. Logits and
pre-logit features are compared in float32 eval mode at two input sizes, and every stage's output
(``return_stages``) with the reference's own intermediate outputs (timm's modules, transformers'
``hidden_states``).
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

import references as R
from tl_jax import load_pretrained, preprocess
from tl_jax.models import registry
from tl_jax.weights import importer
from tl_jax.weights.convert import ConversionError

ROOT = Path(__file__).resolve().parents[1]


batch, ours, check, cli = R.source_batch, R.port_outputs, R.check_parity, R.convert_cli


# ------------------------------------------------------------------------------------------------ timm

def timm_reference(name: str, seed: int):
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    R.randomize_torch_bn(model, seed)
    return model.eval()


def timm_outputs(model, x_nhwc):
    """``model(x)`` and its pre-logit features (``forward_head(..., pre_logits=True)``: what enters the
    classifier), caught in the same forward."""
    return R.torch_logits_and_activation(model, x_nhwc, model.get_classifier(), entering=True)


TIMM_CASES = [("resnet18", (224, 160), "model.safetensors"), ("resnet50", (224, 160), "resnet50.pth"),
              ("resnet152", (224, 128), "model.safetensors"), ("vgg16", (224, 160), "model.safetensors"),
              ("vgg16_bn", (224, 128), "model.safetensors"), ("inception_v3", (299, 160), "model.safetensors")]


@pytest.mark.parametrize("arch,sizes,filename", TIMM_CASES)
def test_timm_parity(arch, sizes, filename, photos, tmp_path):
    import safetensors.torch
    import torch

    ref = timm_reference(arch, seed=len(arch))
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        safetensors.torch.save_file(ref.state_dict(), str(path))
    else:
        torch.save(ref.state_dict(), path)
    out = tmp_path / "store"
    info = registry.model_config(arch, "timm")
    if arch == "resnet18":  # once through the script itself
        stdout = cli("--arch", arch, "--source", "timm", "--weights", "a1_in1k", "--input", str(path),
                     "--output", str(out))
        assert "converted resnet18 (timm a1_in1k, 1000 classes)" in stdout
    else:
        importer.convert_weights(arch, "timm", out, path)
    model, variables, meta = load_pretrained(out)
    assert preprocess.get_spec(meta["preprocessing"]) == info.weights.preprocessing
    refs, outs = {}, {}
    for size in sizes:
        x = batch(photos, meta["preprocessing"], size)
        refs[size], outs[size] = timm_outputs(ref, x), ours(model, variables, x)
    check(f"timm {arch}", refs, outs)


def test_timm_other_architectures_are_refused_by_name(tmp_path):
    import safetensors.torch
    import timm

    for name, words in (("resnet50d", "deep stem"), ("resnext50_32x4d", "grouped 3x3 convolutions"),
                        ("seresnet50", "squeeze-excitation")):
        path = tmp_path / f"{name}.safetensors"
        safetensors.torch.save_file(timm.create_model(name, pretrained=False).state_dict(), str(path))
        with pytest.raises(ConversionError, match=words):
            importer.convert_weights("resnet50", "timm", tmp_path / "out", path)
        assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------- transformers

def hf_reference(depth: int, directory: Path, num_labels: int = 1000, seed: int = 0, **config):
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from tl_jax.models import resnet

    sizes, bottleneck = resnet.CONFIGS[depth]
    torch.manual_seed(seed)
    cfg = ResNetConfig(depths=list(sizes), layer_type="bottleneck" if bottleneck else "basic",
                       hidden_sizes=[w * (4 if bottleneck else 1) for w in (64, 128, 256, 512)],
                       num_labels=num_labels, **config)
    model = ResNetForImageClassification(cfg)
    R.randomize_torch_bn(model, seed)
    model.eval()
    model.save_pretrained(directory)
    return model


def hf_outputs(model, x_nhwc):
    """The logits and the flattened pooler output (what enters the classifier), caught in the same forward."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
        caught = []
        hook = model.classifier.register_forward_pre_hook(lambda m, inputs: caught.append(inputs[0]))
        try:
            logits = model(x).logits.numpy()
        finally:
            hook.remove()
        assert len(caught) == 1
        return logits, caught[0].flatten(1).numpy()


@pytest.mark.parametrize("depth,num_labels", [(18, 1000), (50, 10), (152, 1000)])
def test_transformers_parity(depth, num_labels, photos, tmp_path):
    ref = hf_reference(depth, tmp_path / "hf", num_labels, seed=depth)
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    out = tmp_path / "store"
    if depth == 18:
        assert "converted resnet18 (hf imagenet, 1000 classes)" in cli(
            "--arch", "resnet18", "--source", "hf", "--input", str(tmp_path / "hf"), "--output", str(out))
    else:
        importer.convert_weights(f"resnet{depth}", "hf", out, tmp_path / "hf")
    model, variables, meta = load_pretrained(out)
    assert meta["num_classes"] == num_labels
    refs, outs = {}, {}
    for size in (224, 160):
        x = batch(photos, meta["preprocessing"], size)
        refs[size], outs[size] = hf_outputs(ref, x), ours(model, variables, x)
    check(f"transformers resnet-{depth}", refs, outs)


@pytest.mark.parametrize("config,words", [({"downsample_in_bottleneck": True}, "downsample_in_bottleneck=True"),
                                          ({"downsample_in_first_stage": True}, "downsample_in_first_stage=True")])
def test_transformers_other_architectures_are_refused(config, words, tmp_path):
    hf_reference(50, tmp_path / "hf", **config)
    with pytest.raises(ConversionError, match=words):
        importer.convert_weights("resnet50", "hf", tmp_path / "out", tmp_path / "hf")
    assert not (tmp_path / "out").exists()


def test_transformers_config_names_the_architecture(tmp_path):
    hf_reference(34, tmp_path / "hf")
    with pytest.raises(ConversionError, match="describes resnet34, not resnet50: pass --arch resnet34"):
        importer.convert_weights("resnet50", "hf", tmp_path / "out", tmp_path / "hf")




# ------------------------------------------------------------------------------------ stage outputs

def _timm_stage_modules(arch: str, net) -> list:
    """timm's module whose output is each of our stages but the head (torchvision's names, timm's pools)."""
    if arch.startswith("vgg"):
        ends = [int(m[0].split(":")[1][:-1]) - 1 for m in registry.model_config(arch, "torchvision").torch_stages[:5]]
        return [net.features[i] for i in ends] + [net.pre_logits]
    rename = {"maxpool1": "Pool1", "maxpool2": "Pool2"}
    return [getattr(net, rename.get(m[-1], m[-1])) for m in registry.model_config(arch, "timm").torch_stages[:-1]]


def _ours_by_stage(out, arch, source, x):
    model, variables, _ = load_pretrained(out)
    stages = jax.jit(lambda v, x: model.apply(v, x, train=False, return_stages=True))(variables, x)
    assert list(stages) == list(registry.model_config(arch, source).stage_names)
    return [np.asarray(v) for v in stages.values()]


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("vgg11_bn", 64), ("inception_v3", 107)])
def test_every_stage_output_equals_timm_module_outputs(arch, size, tmp_path):
    import safetensors.torch

    ref = timm_reference(arch, seed=3)
    safetensors.torch.save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    importer.convert_weights(arch, "timm", tmp_path / "store", tmp_path / "model.safetensors")
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    refs, logits = R.hooked_outputs(ref, _timm_stage_modules(arch, ref), x)
    got = _ours_by_stage(tmp_path / "store", arch, "timm", x)
    for name, a, b in zip(registry.model_config(arch, "timm").stage_names, got, [*refs, logits]):
        if name == "classifier":                # timm's VGG MLP is convolutional: (N, 4096, 1, 1) here
            b = b.reshape(len(b), -1)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert R.parity_error(a, b) <= 1e-4, (name, R.parity_error(a, b))


@pytest.mark.parametrize("depth", [18, 50])
def test_every_stage_output_equals_transformers_hidden_states(depth, tmp_path):
    import torch

    ref = hf_reference(depth, tmp_path / "hf", num_labels=10, seed=depth)
    importer.convert_weights(f"resnet{depth}", "hf", tmp_path / "store", tmp_path / "hf")
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        out = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
    refs = [h.numpy().transpose(0, 2, 3, 1) for h in out.hidden_states] + [out.logits.numpy()]
    got = _ours_by_stage(tmp_path / "store", f"resnet{depth}", "hf", x)
    assert len(refs) == len(got) == 6          # embedder (our stem), 4 stages, logits
    for name, a, b in zip(registry.model_config(f"resnet{depth}", "hf").stage_names, got, refs):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert R.parity_error(a, b) <= 1e-4, (name, R.parity_error(a, b))
