"""The weights importer, its command line, the weights store and the fetcher: clear errors, nothing half-written.

Every failing conversion must name its problem and leave neither the output directory nor a
temporary directory behind. Most tests call ``importer.convert_weights``; three subprocess runs
check the command-line contract of ``scripts/convert_weights.py`` (exit codes, one-line errors).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import references as R
from tl_jax import load_pretrained, preprocess
from tl_jax.models import registry
from tl_jax.weights import fetch, importer, store
from tl_jax.weights.convert import ConversionError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/convert_weights.py"


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """A torchvision ResNet-18 state_dict file with random weights and BN statistics."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    model = R.torchvision_reference("resnet18", str(path), seed=3)
    return path, {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def stored(tmp_path_factory, resnet18):
    """ResNet-18 converted by the importer."""
    out = tmp_path_factory.mktemp("store") / "resnet18"
    importer.convert_weights("resnet18", "torchvision", out, resnet18[0])
    return out


def convert_fails(tmp_path, error, arch, source, input_file=None) -> str:
    """Convert into ``tmp_path/out``: it must raise exactly ``error`` and leave ``tmp_path`` as it was."""
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error) as raised:
        importer.convert_weights(arch, source, tmp_path / "out", input_file)
    assert type(raised.value) is error
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary directory
    return str(raised.value)


def test_wrong_architecture(tmp_path, resnet18):
    err = convert_fails(tmp_path, ConversionError, "resnet50", "torchvision", resnet18[0])
    assert "torchvision weights for resnet50 do not match the model" in err
    assert "missing 165 target keys" in err  # e.g. the third conv and BN of every block
    assert "first shape mismatch" in err and "source (128,) vs target (512,)" in err


def test_truncated_file(tmp_path, resnet18):
    data = resnet18[0].read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    err = convert_fails(tmp_path, ConversionError, "resnet18", "torchvision", bad)
    assert f"{bad} is not a readable torch weights file" in err


def test_truncated_keras_file(tmp_path):
    import h5py

    good = tmp_path / "weights.h5"
    with h5py.File(good, "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv"]
        g = f.create_group("conv1_conv")
        g.attrs["weight_names"] = [b"conv1_conv/kernel:0", b"conv1_conv/bias:0"]
        g["conv1_conv/kernel:0"] = np.ones((7, 7, 3, 64), np.float32)
        g["conv1_conv/bias:0"] = np.ones(64, np.float32)
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(good.read_bytes()[:1500])
    err = convert_fails(tmp_path, ConversionError, "resnet50", "keras", bad)
    assert f"{bad} is not a readable HDF5 file" in err and "truncated file" in err


@pytest.mark.parametrize("source, suffix, message", [
    ("torchvision", ".pth", "is not a readable torch weights file"),
    ("keras", ".h5", "is not a readable HDF5 file"),
])
def test_not_a_weights_file(tmp_path, source, suffix, message):
    bad = tmp_path / f"notes{suffix}"
    bad.write_text("these are not weights\n" * 100)
    err = convert_fails(tmp_path, ConversionError, "resnet50", source, bad)
    assert f"{bad} {message}" in err


@pytest.mark.parametrize("source", registry.SOURCES)
def test_missing_input(tmp_path, source):
    err = convert_fails(tmp_path, FileNotFoundError, "resnet50", source, tmp_path / "absent.pth")
    assert f"no such weights file: {tmp_path / 'absent.pth'}" in err


def test_unknown_arch(tmp_path):
    err = convert_fails(tmp_path, ValueError, "resnet51", "torchvision")
    assert "unknown arch 'resnet51'" in err
    for arch, source in registry.available():
        if source == "torchvision":
            assert arch in err


def test_existing_output_needs_overwrite(tmp_path, resnet18):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        importer.convert_weights("resnet18", "torchvision", out, resnet18[0])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    summary = importer.convert_weights("resnet18", "torchvision", out, resnet18[0], overwrite=True)
    assert summary.pop("seconds") > 0
    assert summary == {"arch": "resnet18", "source": "torchvision", "weights": "IMAGENET1K_V1", "num_classes": 1000,
                       "params": 11_689_512, "ignored": [], "output": str(out)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metadata.json"]


def test_keras_notop_file_stores_a_headless_model(tmp_path):
    """A ``_notop`` file (``include_top=False``) converts into a store without a head: num_classes null."""
    path = tmp_path / "resnet50_notop.h5"
    ref = R.keras_reference("ResNet50", str(path), 64, seed=1, include_top=False, pooling="avg")
    out = tmp_path / "resnet50_keras_notop"
    summary = importer.convert_weights("ResNet50", "keras", out, path)
    assert (summary["arch"], summary["source"], summary["num_classes"]) == ("resnet50", "keras", None)
    assert summary["params"] == sum(int(np.prod(w.shape)) for w in ref.trainable_weights)  # no BN statistics
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["arch"], meta["num_classes"], meta["class_names"]) == ("resnet50", None, None)

    model, variables, meta = load_pretrained(out, num_classes=3, seed=0)
    assert model.num_classes == 3 and meta["num_classes"] == 3
    head = variables["params"]["head"]  # a fresh head (LeCun-normal kernel, zero bias) on the stored backbone
    assert head["kernel"].shape == (2048, 3) and float(np.std(head["kernel"])) > 0
    np.testing.assert_array_equal(head["bias"], np.zeros(3))
    np.testing.assert_array_equal(variables["params"]["layer4"]["block2"]["conv3"]["kernel"],
                                  ref.get_layer("conv5_block3_3_conv").get_weights()[0])
    np.testing.assert_array_equal(variables["batch_stats"]["stem"]["bn1"]["var"],
                                  ref.get_layer("conv1_bn").get_weights()[3])


def test_metadata(stored, resnet18):
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    meta = json.loads((stored / "metadata.json").read_text())
    info = registry.model_config("resnet18", "torchvision")
    assert (meta["arch"], meta["source"], meta["num_classes"]) == ("resnet18", "torchvision", 1000)
    assert meta["stage_names"] == list(info.stage_names)
    assert preprocess.spec_from_metadata(meta) == info.preprocessing
    assert (meta["input_size"], meta["resize_size"]) == (224, 256)
    assert meta["class_names"] == list(_IMAGENET_CATEGORIES)
    assert meta["source_file"] == "resnet18.pth"
    assert meta["source_sha256"] == hashlib.sha256(resnet18[0].read_bytes()).hexdigest()
    assert meta["tl_jax_version"] and meta["created"]


def test_load_pretrained_holds_the_source_weights(stored, resnet18):
    model, variables, meta = load_pretrained(stored)
    state = resnet18[1]
    np.testing.assert_array_equal(variables["params"]["stem"]["conv1"]["kernel"],
                                  state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["layer4"]["block1"]["bn2"]["var"],
                                  state["layer4.1.bn2.running_var"])
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], state["fc.weight"].T)
    assert model.num_classes == 1000


def test_load_pretrained_new_head(stored):
    import jax

    _, base, _ = load_pretrained(stored)
    model, v0, meta = load_pretrained(stored, num_classes=10, seed=0, frozen_stages=("stem", "layer1"))
    _, v0_again, _ = load_pretrained(stored, num_classes=10, seed=0)
    _, v1, _ = load_pretrained(stored, num_classes=10, seed=1)
    assert (model.num_classes, model.frozen_stages) == (10, ("stem", "layer1"))
    assert (meta["num_classes"], meta["class_names"]) == (10, None)
    head = v0["params"]["head"]
    assert head["kernel"].shape == (512, 10) and head["bias"].shape == (10,)
    # The documented init: Flax Dense defaults, LeCun normal (std 1/sqrt(fan_in)) kernel and zero bias.
    assert abs(float(np.std(head["kernel"])) * np.sqrt(512) - 1) < 0.1
    np.testing.assert_array_equal(head["bias"], np.zeros(10))
    np.testing.assert_array_equal(head["kernel"], v0_again["params"]["head"]["kernel"])
    assert not np.array_equal(head["kernel"], v1["params"]["head"]["kernel"])
    body = lambda v: {**v, "params": {k: p for k, p in v["params"].items() if k != "head"}}  # noqa: E731
    jax.tree.map(np.testing.assert_array_equal, body(v0), body(base))
    assert jax.jit(model.apply)(v0, np.zeros((2, 64, 64, 3), np.float32)).shape == (2, 10)


def test_load_pretrained_errors(tmp_path, stored):
    with pytest.raises(FileNotFoundError, match="no converted-weights directory"):
        load_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no metadata.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "meta_only").mkdir()
    (tmp_path / "meta_only" / "metadata.json").write_text((stored / "metadata.json").read_text())
    with pytest.raises(FileNotFoundError, match="no checkpoint/"):
        load_pretrained(tmp_path / "meta_only")
    # A checkpoint that is not the model its metadata names.
    shutil.copytree(stored, tmp_path / "mislabelled")
    meta = json.loads((stored / "metadata.json").read_text())
    (tmp_path / "mislabelled" / "metadata.json").write_text(json.dumps({**meta, "arch": "resnet34"}))
    with pytest.raises(ValueError, match="does not fit its metadata's model: missing .*layer1/block2"):
        load_pretrained(tmp_path / "mislabelled")


def test_save_pretrained_failure_leaves_nothing(tmp_path, stored, monkeypatch):
    import orbax.checkpoint as ocp

    _, variables, meta = load_pretrained(stored)
    with pytest.raises(ValueError, match="lacks"):
        store.save_pretrained(tmp_path / "a", variables, {"arch": "resnet18"})

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        store.save_pretrained(tmp_path / "b", variables, meta)
    assert list(tmp_path.iterdir()) == []
    # A failed overwrite keeps the old store.
    monkeypatch.undo()
    store.save_pretrained(tmp_path / "c", variables, meta)
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        store.save_pretrained(tmp_path / "c", variables, meta, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert json.loads((tmp_path / "c" / "metadata.json").read_text())["arch"] == "resnet18"


# --- the command line -----------------------------------------------------------------------------------

def run_script(*args):
    """``python scripts/convert_weights.py ARGS`` from the repository root: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_error_line(stderr, *parts):
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert_weights.py: error: "), stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_command_line_converts_then_refuses_to_overwrite(tmp_path, resnet18):
    out = tmp_path / "out"
    args = ["--arch", "resnet18", "--source", "torchvision", "--input", resnet18[0], "--output", out]
    code, stdout, stderr = run_script(*args)
    assert code == 0, stderr
    assert re.fullmatch(rf"converted resnet18 \(torchvision IMAGENET1K_V1, 1000 classes\): 11,689,512 params "
                        rf"in \d+\.\d s -> {re.escape(str(out))}\n", stdout), stdout
    assert "Traceback" not in stderr
    # A failing run (exit 1): one line on stderr, the existing store untouched.
    metadata = (out / "metadata.json").read_text()
    code, stdout, stderr = run_script(*args)
    assert code == 1 and stdout == ""
    assert_one_error_line(stderr, f"{out} already exists", "--overwrite")
    assert (out / "metadata.json").read_text() == metadata
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_command_line_usage_error(tmp_path):
    code, stdout, stderr = run_script("--arch", "resnet18", "--source", "torchvision")  # no --output
    assert code == 2 and stdout == ""
    assert_one_error_line(stderr, "--output", "--help")
    assert list(tmp_path.iterdir()) == []


# --- fetching ------------------------------------------------------------------------------------------

def _network_reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=2).close()
        return True
    except OSError:
        return False


def test_offline_fetch_fails_fast_with_a_hint(tmp_path, monkeypatch):
    if _network_reachable("download.pytorch.org"):
        pytest.skip("the network is reachable here: this checks the offline behaviour")
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("TL_JAX_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    err = convert_fails(tmp_path, fetch.FetchError, "resnet50", "torchvision")
    assert time.perf_counter() - start < 10
    assert "--input FILE" in err and "resnet50-0676ba61.pth" in err
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # no partial download


def test_fetch_deadline_covers_a_hanging_resolver(tmp_path, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: release.wait(60) and [])
    start = time.perf_counter()
    try:
        with pytest.raises(fetch.FetchError, match="no connection within 1 s.*--input FILE"):
            fetch.fetch("resnet50", "keras", tmp_path, connect_timeout=1.0)
    finally:
        release.set()
    assert time.perf_counter() - start < 3
    assert list((tmp_path / "keras").iterdir()) == []


def test_fetch_rejects_a_corrupt_download(tmp_path):
    src = tmp_path / "resnet18-00000000.pth"
    src.write_bytes(b"not the published file")
    with pytest.raises(fetch.FetchError, match="expected 00000000"):
        fetch.fetch("resnet18", "torchvision", tmp_path / "cache", url=src.as_uri())
    assert list((tmp_path / "cache" / "torchvision").iterdir()) == []


def test_fetch_uses_the_cache(tmp_path):
    data = b"weights"
    prefix = hashlib.sha256(data).hexdigest()[:8]
    src = tmp_path / f"resnet18-{prefix}.pth"
    src.write_bytes(data)
    got = fetch.fetch("resnet18", "torchvision", tmp_path / "cache", url=src.as_uri())
    assert got == tmp_path / "cache" / "torchvision" / src.name and got.read_bytes() == data
    src.unlink()  # a second fetch must not download again
    assert fetch.fetch("resnet18", "torchvision", tmp_path / "cache", url=src.as_uri()) == got


def test_urls_match_the_frameworks():
    """The registry's published files are the ones torchvision and keras.applications download."""
    import inspect

    import torchvision
    from keras.src.applications import inception_v3, resnet, vgg16, vgg19

    pairs = registry.available()
    for arch, source in pairs:
        if source == "torchvision":
            weights = registry.model_config(arch, source).weights
            enum = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
            assert weights.url == enum.url, arch
            assert weights.top1 == enum.meta["_metrics"]["ImageNet-1K"]["acc@1"], arch
            # torch.hub checks the sha256 prefix in the file name: the registry's digest must be it.
            prefix = re.fullmatch(r".*-([0-9a-f]+)\.pth", enum.url).group(1)
            assert (weights.hash_name, weights.digest) == ("sha256", prefix), arch
    # Keras: the URLs and md5s that the installed keras.applications download and check.
    keras_urls = {f"resnet{d}": resnet.BASE_WEIGHTS_PATH + f"resnet{d}_weights_tf_dim_ordering_tf_kernels.h5"
                  for d in (50, 101, 152)}
    keras_urls.update(vgg16=vgg16.WEIGHTS_PATH, vgg19=vgg19.WEIGHTS_PATH, inception_v3=inception_v3.WEIGHTS_PATH)
    modules = {"vgg16": vgg16, "vgg19": vgg19, "inception_v3": inception_v3}
    keras_pairs = [arch for arch, source in pairs if source == "keras"]
    assert sorted(keras_pairs) == sorted(keras_urls)
    for arch in keras_pairs:
        weights = registry.model_config(arch, "keras").weights
        assert weights.url == keras_urls[arch], arch
        assert weights.hash_name == "md5", arch
        if arch in modules:
            assert f'file_hash="{weights.digest}"' in inspect.getsource(modules[arch]), arch
        else:
            assert resnet.WEIGHTS_HASHES[arch][0] == weights.digest
