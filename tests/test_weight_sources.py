"""Where weights come from: the registry's tags against the publishers' own tables, the frameworks' caches
(found with the network unreachable), and evaluating converted weights on an ImageNet-layout dataset.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import references as R
from tl_jax import load_pretrained, preprocess
from tl_jax.models import registry
from tl_jax.models.timm_tags import TIMM_TAGS
from tl_jax.weights import importer, store

ROOT = Path(__file__).resolve().parents[1]


def test_timm_tags_match_timm_pretrained_cfg():
    """Every timm tag of our architectures is in the registry, with timm's own preprocessing and Hub file."""
    import timm

    for arch in sorted({a for a, s in registry.available() if s == "timm"}):
        info = registry.model_config(arch, "timm")
        published = {n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*") if n.split(".")[0] == arch}
        published = {t for t in published if timm.models.get_pretrained_cfg(f"{arch}.{t}").num_classes == 1000}
        assert set(info.tags) == published, arch
        assert info.tags[0] == timm.models.get_pretrained_cfg(arch).tag, arch  # timm's default tag first
        for w in info.weights_files:
            cfg = timm.models.get_pretrained_cfg(f"{arch}.{w.tag}")
            expected = preprocess.timm_spec(w.preprocessing.name, cfg.input_size[1], cfg.crop_pct, cfg.interpolation,
                                            cfg.mean, cfg.std)
            assert w.preprocessing == expected, (arch, w.tag)
            assert w.hub == (cfg.hf_hub_id, "model.safetensors"), (arch, w.tag)
    # The records themselves: every field of timm's pretrained_cfg they copy (all but top1), module names included.
    for t in TIMM_TAGS:
        cfg = timm.models.get_pretrained_cfg(t.name)
        assert (t.architecture, t.tag, t.hf_hub_id) == (cfg.architecture, cfg.tag, cfg.hf_hub_id), t.name
        assert (t.input_size, t.crop_pct, t.interpolation, t.mean, t.std) == (
            cfg.input_size[1], cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std), t.name
        assert (t.test_input_size, t.test_crop_pct) == (
            cfg.test_input_size and cfg.test_input_size[1], cfg.test_crop_pct), t.name
        assert (t.first_conv, t.classifier) == (cfg.first_conv, cfg.classifier), t.name


def test_torchvision_v2_tags_match_torchvision():
    import torchvision

    for depth in (50, 101, 152):
        info = registry.model_config(f"resnet{depth}", "torchvision")
        enum = torchvision.models.get_model_weights(f"resnet{depth}").IMAGENET1K_V2
        w = info.weights_for("IMAGENET1K_V2")
        assert (w.url, w.top1) == (enum.url, enum.meta["_metrics"]["ImageNet-1K"]["acc@1"])
        t = enum.transforms()
        assert (w.preprocessing.resize_size, w.preprocessing.crop_size) == (t.resize_size[0], t.crop_size[0])
        assert w.preprocessing.interpolation == t.interpolation.value
        assert w.preprocessing.mean == tuple(t.mean) and w.preprocessing.std == tuple(t.std)
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET1K_V2' for resnet18 .*IMAGENET1K_V1"):
        registry.model_config("resnet18").weights_for("IMAGENET1K_V2")


# ------------------------------------------------------------------------------------- caches, offline
def offline_env(tmp_path: Path) -> dict[str, str]:
    """Every cache in ``tmp_path``; every connection goes to a closed local port (the network is unreachable)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("HF_", "TORCH_HOME", "KERAS_HOME"))}
    dead = "http://127.0.0.1:9"
    env.update(TORCH_HOME=str(tmp_path / "torch"), KERAS_HOME=str(tmp_path / "keras"), HF_HOME=str(tmp_path / "hf"),
               TL_JAX_CACHE=str(tmp_path / "tl_jax"), HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead,
               https_proxy=dead, NO_PROXY="", no_proxy="")
    return env


def convert(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/convert_weights.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def plant_hub_file(hf_home: Path, repo_id: str, files: dict[str, Path]) -> None:
    """The Hugging Face cache layout: ``hub/models--org--name/{refs/main, snapshots/<commit>/<file>}``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name, src in files.items():
        (repo / "snapshots" / commit / name).write_bytes(src.read_bytes())


def test_planted_caches_convert_without_network(tmp_path):
    import safetensors.torch

    env = offline_env(tmp_path)
    # torch.hub's cache: torchvision's V2 file under its published name.
    tv = R.torchvision_reference("resnet50", str(tmp_path / "tv.pth"), seed=2)
    hub_dir = tmp_path / "torch" / "hub" / "checkpoints"
    hub_dir.mkdir(parents=True)
    (tmp_path / "tv.pth").rename(hub_dir / registry.model_config("resnet50").weights_for("IMAGENET1K_V2").filename)
    # Keras' cache: the published ResNet-50 file name.
    R.keras_reference("ResNet50", str(tmp_path / "k.h5"), 224, seed=2)
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "k.h5").rename(tmp_path / "keras" / "models" / registry.model_config("resnet50", "keras").weights.filename)
    # The Hugging Face cache: timm's resnet18.a1_in1k.
    import timm

    safetensors.torch.save_file(timm.create_model("resnet18").state_dict(), str(tmp_path / "m.safetensors"))
    plant_hub_file(tmp_path / "hf", "timm/resnet18.a1_in1k", {"model.safetensors": tmp_path / "m.safetensors"})

    for args, want in ((("--arch", "resnet50", "--source", "torchvision", "--weights", "IMAGENET1K_V2"),
                        "converted resnet50 (torchvision IMAGENET1K_V2, 1000 classes)"),
                       (("--arch", "resnet50", "--source", "keras"), "converted resnet50 (keras imagenet, 1000"),
                       (("--arch", "resnet18", "--source", "timm"), "converted resnet18 (timm a1_in1k, 1000")):
        out = tmp_path / f"out_{args[3]}"
        proc = convert(env, *args, "--output", str(out))
        assert proc.returncode == 0 and want in proc.stdout, proc.stderr
    meta = store.read_metadata(tmp_path / "out_torchvision")
    assert (meta["weights"], meta["resize_size"], meta["published_top1"]) == ("IMAGENET1K_V2", 232, 80.858)
    _, variables, _ = load_pretrained(tmp_path / "out_torchvision")
    np.testing.assert_array_equal(variables["params"]["head"]["bias"], tv.fc.bias.detach().numpy())
    meta = store.read_metadata(tmp_path / "out_timm")
    assert preprocess.get_spec(meta["preprocessing"]).interpolation == "bicubic" and meta["resize_size"] == 235


def test_offline_without_cache_fails_fast_naming_every_place(tmp_path):
    env = offline_env(tmp_path)
    for args, places in ((("--arch", "resnet50", "--source", "timm", "--weights", "a1_in1k"),
                          ["Hugging Face cache (repo timm/resnet50.a1_in1k"]),
                         (("--arch", "resnet50", "--source", "torchvision"),
                          [str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"),
                           str(tmp_path / "tl_jax" / "torchvision" / "resnet50-0676ba61.pth")]),
                         (("--arch", "resnet50", "--source", "hf"), ["repo microsoft/resnet-50"])):
        start = time.perf_counter()
        proc = convert(env, *args, "--output", str(tmp_path / "out"))
        took = time.perf_counter() - start
        assert proc.returncode == 1 and took < 60, (took, proc.stderr)
        line = proc.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        for place in places:
            assert place in line, line
        assert f"--source {args[3]} --input" in line, line
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- evaluation on ImageNet layout
def test_evaluate_converted_weights_on_imagenet_layout(tmp_path):
    """tfds ``imagenet2012`` (mocked) is in the standard class order; the metrics are the model's on its images."""
    import jax
    import tensorflow_datasets as tfds

    from tl_jax.experiment import restore

    R.torchvision_reference("resnet18", str(tmp_path / "r18.pth"), seed=4)
    importer.convert_weights("resnet18", "torchvision", tmp_path / "store", tmp_path / "r18.pth")
    from timm.data import ImageNetInfo

    names = store.imagenet_class_names()
    assert names is not None and len(names) == 1000 and store.read_metadata(tmp_path / "store")["class_names"] == names
    # timm's ImageNet table (synset and WordNet lemmas per index) ties torchvision's names to synsets: every
    # torchvision name is one of the lemmas at its index but two it disambiguates ("crane bird", "maillot tank suit").
    imagenet = ImageNetInfo()
    lemmas = [imagenet.index_to_description(i).lower() for i in range(1000)]
    assert sum(n.lower() not in d for n, d in zip(names, lemmas)) <= 2
    with tfds.testing.mock_data(num_examples=8):
        builder = tfds.builder("imagenet2012")
        synsets = builder.info.features["label"].names
        assert synsets == sorted(synsets) == [imagenet.index_to_label_name(i) for i in range(1000)]
        metrics = restore.evaluate_weights(str(tmp_path / "store"), "tfds:imagenet2012", "validation", batch_size=4)
        ds = tfds.load("imagenet2012", split="validation")
        model, variables, meta = load_pretrained(tmp_path / "store")
        spec = preprocess.get_spec(meta["preprocessing"])
        x = np.stack([preprocess.normalize(preprocess.resize_and_center_crop(ex["image"].numpy(), spec.resize_size,
                                                                            spec.crop_size), spec) for ex in ds])
        labels = np.array([int(ex["label"]) for ex in ds])
    logits = np.asarray(jax.jit(model.apply)(variables, x))
    assert metrics["count"] == len(labels) == 8
    assert metrics["top1"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert metrics["top5"] == pytest.approx(np.mean([l in t for l, t in zip(labels, top5)]))
    assert metrics["published_top1"] == pytest.approx(0.69758)


def test_the_tags_interpolation_reaches_the_eval_transform():
    """timm's bicubic evaluation resize is what the data pipeline does for a timm tag (torchvision's: bilinear)."""
    from tl_jax.data import transform

    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    for source, arch, filt in (("timm", "resnet50", "bicubic"), ("torchvision", "resnet50", "bilinear")):
        spec = registry.model_config(arch, source).preprocessing
        t = transform.make_transform(spec, train=False, image_size=32)
        assert t.interpolation == filt
        want = preprocess.resize_and_center_crop(image, t.resize_size, 32, filt)
        other = preprocess.resize_and_center_crop(image, t.resize_size, 32, "bilinear" if filt == "bicubic" else "bicubic")
        got = transform.eval_array(image, t)
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, other)
