"""The converter CLI, the weights store and the fetcher: clear errors, nothing half-written.

Every failing conversion must name its problem and leave neither the output
directory nor a temporary directory behind.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import references as R
from tl_jax import load_pretrained, preprocess
from tl_jax.models import registry
from tl_jax.weights import fetch, store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli():
    return R.load_convert_cli()


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """A torchvision ResNet-18 state_dict file with random weights and BN statistics."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    model = R.torchvision_reference("resnet18", str(path), seed=3)
    return path, {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def stored(tmp_path_factory, resnet18, cli):
    """ResNet-18 converted through the CLI."""
    out = tmp_path_factory.mktemp("store") / "resnet18"
    assert cli.main(["--arch", "resnet18", "--source", "torchvision", "--input", str(resnet18[0]),
                     "--output", str(out)]) == 0
    return out


def run_failing(cli, capsys, tmp_path, *args):
    """Run the CLI into ``tmp_path/out``; it must fail and leave ``tmp_path`` as it was."""
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = cli.main([*args, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary directory
    return err


def test_wrong_architecture(cli, capsys, tmp_path, resnet18):
    err = run_failing(cli, capsys, tmp_path, "--arch", "resnet50", "--source", "torchvision",
                      "--input", str(resnet18[0]))
    assert "torchvision weights for resnet50 do not match the model" in err
    assert "missing 165 target keys" in err  # e.g. the third conv and BN of every block
    assert "first shape mismatch" in err and "source (128,) vs target (512,)" in err


def test_truncated_file(cli, capsys, tmp_path, resnet18):
    data = resnet18[0].read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    err = run_failing(cli, capsys, tmp_path, "--arch", "resnet18", "--source", "torchvision", "--input", str(bad))
    assert f"{bad} is not a readable torch weights file" in err


def test_truncated_keras_file(cli, capsys, tmp_path):
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
    err = run_failing(cli, capsys, tmp_path, "--arch", "resnet50", "--source", "keras", "--input", str(bad))
    assert f"{bad} is not a readable HDF5 file" in err and "truncated file" in err


@pytest.mark.parametrize("source, suffix, message", [
    ("torchvision", ".pth", "is not a readable torch weights file"),
    ("keras", ".h5", "is not a readable HDF5 file"),
])
def test_not_a_weights_file(cli, capsys, tmp_path, source, suffix, message):
    bad = tmp_path / f"notes{suffix}"
    bad.write_text("these are not weights\n" * 100)
    err = run_failing(cli, capsys, tmp_path, "--arch", "resnet50", "--source", source, "--input", str(bad))
    assert f"{bad} {message}" in err


def test_missing_input(cli, capsys, tmp_path):
    err = run_failing(cli, capsys, tmp_path, "--arch", "resnet18", "--source", "torchvision",
                      "--input", str(tmp_path / "absent.pth"))
    assert "no such weights file" in err


def test_unknown_arch(cli, capsys, tmp_path):
    err = run_failing(cli, capsys, tmp_path, "--arch", "resnet51", "--source", "torchvision")
    assert "unknown arch 'resnet51'" in err
    for arch, source in registry.available():
        if source == "torchvision":
            assert arch in err


def test_existing_output_needs_overwrite(cli, capsys, tmp_path, resnet18):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    args = ["--arch", "resnet18", "--source", "torchvision", "--input", str(resnet18[0]), "--output", str(out)]
    assert cli.main(args) == 1
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert cli.main([*args, "--overwrite"]) == 0
    assert "converted resnet18 (torchvision, 1000 classes): 11,689,512 params" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metadata.json"]


def test_metadata(stored, resnet18):
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    meta = json.loads((stored / "metadata.json").read_text())
    info = registry.info("resnet18", "torchvision")
    assert (meta["arch"], meta["source"], meta["num_classes"]) == ("resnet18", "torchvision", 1000)
    assert meta["stage_names"] == list(info.stage_names)
    assert preprocess.spec_from_metadata(meta) == preprocess.SPECS[info.preprocessing]
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
    model, v0, meta = load_pretrained(stored, num_classes=10, seed=0, frozen_depth=2)
    _, v0_again, _ = load_pretrained(stored, num_classes=10, seed=0)
    _, v1, _ = load_pretrained(stored, num_classes=10, seed=1)
    assert (model.num_classes, model.frozen_depth) == (10, 2)
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


# --- fetching ------------------------------------------------------------------------------------------

def _network_reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=2).close()
        return True
    except OSError:
        return False


def test_offline_fetch_fails_fast_with_a_hint(cli, capsys, tmp_path, monkeypatch):
    if _network_reachable("download.pytorch.org"):
        pytest.skip("the network is reachable here: this checks the offline behaviour")
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("TL_JAX_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    err = run_failing(cli, capsys, tmp_path, "--arch", "resnet50", "--source", "torchvision")
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
    import inspect

    import torchvision
    from keras.src.applications import inception_v3, resnet, vgg16, vgg19

    for arch, source in registry.available():
        if source == "torchvision":
            tv = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
            assert fetch.weights_url(arch, source) == tv == fetch.TORCHVISION_BASE + fetch.TORCHVISION_FILES[arch]
    # Keras: the URLs and md5s that the installed keras.applications download and check.
    keras_urls = {f"resnet{d}": resnet.BASE_WEIGHTS_PATH + f"resnet{d}_weights_tf_dim_ordering_tf_kernels.h5"
                  for d in (50, 101, 152)}
    keras_urls.update(vgg16=vgg16.WEIGHTS_PATH, vgg19=vgg19.WEIGHTS_PATH, inception_v3=inception_v3.WEIGHTS_PATH)
    modules = {"vgg16": vgg16, "vgg19": vgg19, "inception_v3": inception_v3}
    for arch, source in registry.available():
        if source == "keras":
            assert fetch.weights_url(arch, source) == keras_urls[arch]
            md5 = fetch.KERAS_FILES[arch][1]
            if arch in modules:
                assert f'file_hash="{md5}"' in inspect.getsource(modules[arch]), arch
            else:
                assert resnet.WEIGHTS_HASHES[arch][0] == md5
