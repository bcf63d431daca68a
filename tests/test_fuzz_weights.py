"""Fuzzed weight files: every corruption converts correctly or is refused in one line; no hang, nothing left.

Five real files with random weights, written by the frameworks themselves: a torchvision ResNet-18
``.pth`` (``torch.save``), the same state_dict as ``.safetensors`` (the ``safetensors`` writer), and a
Keras VGG16 backbone (``include_top=False``, the smallest Keras application) as legacy HDF5, as
Keras 3 ``.weights.h5`` and as a ``.keras`` archive. Each case corrupts one copy (a flipped bit, a truncation, a dropped or
renamed key, a changed dtype or shape, a NaN or infinity) and converts it with
``importer.convert_weights``. The oracle is independent of our readers:

* ``.pth`` and ``.keras`` entries carry CRC-32s: a bit flipped inside an entry must be refused naming
  it; anywhere else the conversion must equal the intact file's or be refused;
* ``.safetensors`` data and HDF5 data have no checksum: a flipped data byte must convert to the
  intact values with that byte flipped (located from the safetensors header / HDF5's data offsets),
  or be refused as non-finite when the flip made a NaN or infinity; header flips: refused or equal
  (for HDF5, whose headers have no checksum either, also: equal to what HDF5 itself reads);
* structural damage must be refused naming the file, and the key where one is at fault.

A refusal must be an error the scripts print as one line (ConversionError and the other ValueErrors,
OSError). The store write is stubbed in process (its atomicity has its own tests in
test_convert_cli.py); a few subprocess runs check exit code 1, one stderr line, no traceback and an
empty output location with the real write. Cases are seeded: ``CASE=<format>/<kind>/<i>`` in a
failure reproduces with ``SEED``.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

import references as R
from corruptions import CORRUPTIONS, h5_arrays, h5_source, named, write_mutated
from tl_jax.weights import checks, convert, importer, store

ROOT = Path(__file__).resolve().parents[1]
SEED = 12
HANG_S = 30
# kind -> cases per format: 40 per format, 200 in all.
KINDS = {"flip": 18, "truncate": 5, "drop": 4, "rename": 4, "dtype": 4, "shape": 3, "nonfinite": 2}  # x 5 formats
FORMATS = {"pth": ("resnet18", "torchvision"), "safetensors": ("resnet18", "torchvision"),
           "h5": ("vgg16", "keras"), "weights.h5": ("vgg16", "keras"), "keras": ("vgg16", "keras")}


class Hang(BaseException):
    """A conversion that did not finish within HANG_S (BaseException: no refusal handler may swallow it)."""


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    """``{format: (path, arrays by key, converted variables)}`` for the five intact files."""
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("intact")
    torch_model = R.torchvision_reference("resnet18", str(d / "w.pth"), seed=SEED)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    save_file(state, str(d / "w.safetensors"), metadata={"format": "pt"})
    keras_model = R.keras_reference("VGG16", str(d / "w.h5"), 32, seed=SEED, include_top=False)
    rng = np.random.default_rng(SEED)  # Keras starts biases at zero: make every array distinct
    for layer in keras_model.layers:
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.get_weights()])
    R.save_keras_h5(keras_model, str(d / "w.h5"))
    keras_model.save_weights(str(d / "w.weights.h5"))
    keras_model.save(str(d / "w.keras"))
    out = {}
    for fmt, (arch, source) in FORMATS.items():
        path = d / f"w.{fmt}"
        arrays = state if fmt in ("pth", "safetensors") else h5_arrays(h5_source(fmt, path))
        out[fmt] = (path, arrays, importer._CONVERTERS[source](arch, path))
    return out


CASES = [(fmt, kind, i) for fmt in FORMATS for kind, n in KINDS.items() for i in range(n)]


def expected_values(fmt, arrays, intact_vars, key, value):
    """The intact conversion with source ``key`` holding ``value``: converted by our converter from the
    mapping for state_dicts; for Keras (identity transforms) the one leaf equal to the intact array."""
    arch, source = FORMATS[fmt]
    if fmt in ("pth", "safetensors"):
        return importer._CONVERTERS[source](arch, {**arrays, key: value})
    checks.check_finite({key: value}, key)
    return replace_leaf(intact_vars, arrays[key], value)


def replace_leaf(variables, old, new):
    """``variables`` with the leaf that holds ``old`` (Keras: kernels and biases are stored as they are
    used; every array of the fixture is distinct) holding ``new`` instead."""
    return jax.tree.map(lambda leaf: np.asarray(new, np.float32).reshape(leaf.shape)
                        if leaf.size == old.size and np.array_equal(leaf, old.reshape(leaf.shape)) else leaf,
                        variables)


def as_hdf5_reads(fmt, path, arrays, intact_vars):
    """The intact conversion with every array replaced by what HDF5 reads from the damaged file: the
    faithful conversion when a header bit (a data address, ...) changed what is read; no checksum can
    tell. Arrays HDF5 reads unchanged keep their leaves."""
    got = h5_arrays(h5_source(fmt, path))
    for key, old in arrays.items():
        if key in got and got[key].shape == old.shape and not np.array_equal(got[key], old):
            intact_vars = replace_leaf(intact_vars, old, got[key])
    return intact_vars


def attempt(fmt, path, out, monkeypatch):
    """``convert_weights`` with the store write captured: (variables or None, error or None)."""
    arch, source = FORMATS[fmt]
    saved = {}
    monkeypatch.setattr(store, "save_pretrained", lambda directory, variables, meta, **kw: saved.update(v=variables))

    def hang(*_):
        raise Hang(f"no result within {HANG_S} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_S)
    try:
        importer.convert_weights(arch, source, out, path)
        return saved["v"], None
    except (ValueError, OSError) as e:  # what the scripts print as one line (cli._guarded)
        return None, e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def cached_templates(monkeypatch):
    """The model's variable shapes traced once per configuration, not once per case (a speed-up only:
    tracing ResNet-18 or VGG16 costs 0.2 s, the rest of a conversion about as much)."""
    from tl_jax.models.init import variables_template
    from tl_jax.weights import keras as keras_weights
    from tl_jax.weights import torchvision as torchvision_weights

    cache = {}

    def cached(model, size):
        key = (repr(model), size)
        if key not in cache:
            cache[key] = variables_template(model, size)
        return cache[key]

    monkeypatch.setattr(keras_weights, "variables_template", cached)
    monkeypatch.setattr(torchvision_weights, "variables_template", cached)


def test_fuzzed_weight_files(intact, tmp_path, monkeypatch, cached_templates):
    outs = tmp_path / "outs"
    outs.mkdir()
    counts: dict[str, int] = {}
    took: dict[str, float] = {}
    start = time.perf_counter()
    for fmt, kind, i in CASES:
        case, case_start = f"CASE={fmt}/{kind}/{i}", time.perf_counter()
        src, arrays, intact_vars = intact[fmt]
        rng = np.random.default_rng([SEED, list(FORMATS).index(fmt), list(KINDS).index(kind), i])
        bad = tmp_path / f"bad.{fmt}"
        expect = CORRUPTIONS[kind](rng, fmt, src, arrays, bad) or ("same_or_refuse",)
        variables, error = attempt(fmt, bad, outs / "out", monkeypatch)
        assert list(outs.iterdir()) == [], case  # nothing written, no temporary directory
        if expect[0] == "values":
            try:
                want, want_error = expected_values(fmt, arrays, intact_vars, *expect[1:]), None
            except checks.NonFiniteError as e:
                want, want_error = None, e
            if want_error is not None:
                expect = ("refuse", ["non-finite", named(fmt, src, expect[1])])
            else:
                assert error is None, (case, str(error))
                assert R.same_tree(variables, want), case
        if expect[0] == "same_or_refuse" and error is None:
            assert R.same_tree(variables, intact_vars) or (fmt not in ("pth", "safetensors") and R.same_tree(
                variables, as_hdf5_reads(fmt, bad, arrays, intact_vars))), case
        if expect[0] == "refuse":
            assert error is not None, f"{case}: converted, expected a refusal naming {expect[1]}"
            for part in expect[1]:
                assert part in str(error), (case, part, str(error))
        if error is not None:
            assert str(bad) in str(error), (case, str(error))  # every refusal names the file
            str(error).encode("utf-8")  # printable as it is
        outcome = "refused" if error is not None else "converted"
        counts[outcome] = counts.get(outcome, 0) + 1
        took[f"{fmt}/{kind}"] = took.get(f"{fmt}/{kind}", 0.0) + time.perf_counter() - case_start
    seconds = time.perf_counter() - start
    print(f"\n{len(CASES)} corruptions in {seconds:.1f} s: {counts}; seconds by kind: "
          + ", ".join(f"{k} {v:.1f}" for k, v in took.items()))
    assert len(CASES) >= 200 and counts.get("refused", 0) > 0 and counts.get("converted", 0) > 0


def test_nonfinite_override_converts_faithfully(intact, tmp_path, monkeypatch):
    src, arrays, _ = intact["pth"]
    key = "layer1.0.conv1.weight"
    poisoned = {**arrays, key: arrays[key].copy()}
    poisoned[key][0, 0, 0, 0] = np.nan
    write_mutated("pth", src, arrays, tmp_path / "nan.pth", key, poisoned[key])
    with pytest.raises(checks.NonFiniteError, match=r"nan\.pth: 'layer1\.0\.conv1\.weight' holds 1 non-finite "
                                                    r"value\(s\) \(NaN\).*--allow_nonfinite"):
        importer.convert_weights("resnet18", "torchvision", tmp_path / "out", tmp_path / "nan.pth")
    assert not (tmp_path / "out").exists()
    saved = {}
    monkeypatch.setattr(store, "save_pretrained", lambda d, variables, m, **kw: saved.update(v=variables))
    importer.convert_weights("resnet18", "torchvision", tmp_path / "out", tmp_path / "nan.pth", allow_nonfinite=True)
    assert R.same_tree(saved["v"], importer._CONVERTERS["torchvision"]("resnet18", poisoned, allow_nonfinite=True))
    assert np.isnan(saved["v"]["params"]["layer1"]["block0"]["conv1"]["kernel"]).sum() == 1


def test_legacy_pickle_pth_converts(intact, tmp_path):
    """A pre-1.6 (non-zip) torch file: no checksum to verify; read with weights_only like the zip format."""
    import torch

    src, arrays, intact_vars = intact["pth"]
    torch.save({k: torch.from_numpy(a) for k, a in arrays.items()}, tmp_path / "legacy.pth",
               _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "legacy.pth")
    assert R.same_tree(importer._CONVERTERS["torchvision"]("resnet18", tmp_path / "legacy.pth"), intact_vars)


def test_pickled_code_is_refused(tmp_path):
    """A .pth whose pickle would run code: refused by torch's weights_only unpickler, nothing executed."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"conv1.weight": Payload()}, protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(convert.ConversionError, match="pickles more than tensors, which weights_only loading refuses "
                                                      r"\(WeightsUnpickler error: Unsupported global"):
        importer.convert_weights("resnet18", "torchvision", tmp_path / "out", tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt, kind, flags", [("pth", "flip", []), ("safetensors", "truncate", []),
                                              ("h5", "nonfinite", []), ("keras", "flip", []),
                                              ("weights.h5", "nonfinite", ["--allow_nonfinite"])])
def test_command_line_exit_codes(intact, tmp_path, fmt, kind, flags):
    """The script on corrupted files: exit 1, one stderr line, no traceback, nothing written (real store);
    with --allow_nonfinite a NaN converts (exit 0)."""
    src, arrays, _ = intact[fmt]
    rng = np.random.default_rng([SEED, 99])
    bad = tmp_path / f"bad.{fmt}"
    while True:  # a flip that hits an entry (a CRC refusal), to test the message
        if CORRUPTIONS[kind](rng, fmt, src, arrays, bad)[0] == "refuse":
            break
    arch, source = FORMATS[fmt]
    outs = tmp_path / "outs"
    outs.mkdir()
    proc = subprocess.run([sys.executable, "scripts/convert_weights.py", "--arch", arch, "--source", source,
                           "--input", str(bad), "--output", str(outs / "out"), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr
    if flags:
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in outs.iterdir()) == ["out"]
        return
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert_weights.py: error: ") and str(bad) in lines[0], lines
    assert list(outs.iterdir()) == []
