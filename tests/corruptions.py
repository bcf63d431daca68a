"""Corruptions of weight files for tests/test_fuzz_weights.py, each with what converting the result must give.

A corruption ``(rng, fmt, src, arrays, dst)`` writes a damaged copy of the intact file ``src`` (format
``fmt``: ``pth``, ``safetensors``, ``h5`` (legacy Keras), ``weights.h5`` and ``keras`` (Keras 3); ``arrays`` its
tensors by key) to ``dst`` and returns the expectation, worked out without our readers:

* ``("same_or_refuse",)``: equal to the intact file's conversion, or refused;
* ``("refuse", parts)``: refused, the message holding every part (the key at fault, ...);
* ``("values", key, array)``: the intact conversion with source ``key`` holding ``array`` (a flipped
  byte in data without a checksum, a float dtype change), or refused when ``array`` is not finite.

Byte offsets come from the formats themselves: the zip directory, the safetensors header, HDF5's
own data offsets. Structural damage is written by the format's writer (torch.save, safetensors,
h5py on a copy of the Keras file).
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from tl_jax.weights import convert


def h5_source(fmt: str, src: Path):
    """What h5py opens for a Keras file: the path, or a ``.keras`` archive's ``model.weights.h5``."""
    if fmt != "keras":
        return src
    with zipfile.ZipFile(src) as z:
        return io.BytesIO(z.read("model.weights.h5"))


def h5_arrays(path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file (a path or a file object) by its path."""
    import h5py

    found = {}

    def visit(name, o):  # returns None: visititems stops at the first other value
        if isinstance(o, h5py.Dataset):
            found[name] = o[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def h5_data_ranges(path) -> dict[str, tuple[int, int]]:
    """``{dataset: (file offset, size)}`` of every contiguous dataset, from HDF5 itself."""
    import h5py

    found = {}

    def visit(name, o):
        if isinstance(o, h5py.Dataset) and o.id.get_offset() is not None:
            found[name] = (o.id.get_offset(), o.id.get_storage_size())

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def safetensors_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """``{key: (file offset, size)}`` from the format's documented header (8-byte length, then JSON)."""
    import json

    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return {k: (8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
            for k, v in header.items() if k != "__metadata__"}


def zip_entry_ranges(path) -> dict[str, tuple[int, int]]:
    """``{entry: (file offset of its data, size)}`` of a zip (torch and Keras store entries uncompressed)."""
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        out = {}
        for info in z.infolist():
            f.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
            out[info.filename] = (info.header_offset + 30 + name_len + extra_len, info.compress_size)
        return out


def flip_in(array: np.ndarray, byte: int, bit: int) -> np.ndarray:
    raw = bytearray(np.ascontiguousarray(array).tobytes())
    raw[byte] ^= 1 << bit
    return np.frombuffer(bytes(raw), array.dtype).reshape(array.shape)


# --- corruptions: each writes dst and returns what the conversion must give ----------------------------

@functools.lru_cache
def data_ranges(fmt: str, src: Path) -> dict[str, tuple[int, int]]:
    """``{key: (file offset, size)}`` of the intact file's tensors (zips: their entries)."""
    if fmt in ("pth", "keras"):
        return zip_entry_ranges(src)
    return safetensors_ranges(src.read_bytes()) if fmt == "safetensors" else h5_data_ranges(src)


def flip(rng, fmt, src, arrays, dst):
    ranges, length = data_ranges(fmt, src), src.stat().st_size
    if rng.random() < 0.5:  # inside a tensor or an entry
        key = list(ranges)[rng.integers(len(ranges))]
        start, size = ranges[key]
        offset = start + int(rng.integers(size))
    else:  # anywhere, weighted towards the headers and directories at both ends
        offset = int(rng.integers(min(length, 1 << 16))) if rng.random() < 0.7 else int(rng.integers(length))
        if rng.random() < 0.3:
            offset = length - 1 - offset
        key = next((k for k, (s, n) in ranges.items() if s <= offset < s + n), None)
    bit = int(rng.integers(8))
    shutil.copyfile(src, dst)        # then the one byte, in place: the 58 MB Keras files are not copied in Python
    with open(dst, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0] ^ (1 << bit)
        f.seek(offset)
        f.write(bytes([byte]))
    if key is None:
        return ("same_or_refuse",)
    if fmt in ("pth", "keras"):
        return ("refuse", ["CRC-32", key])
    return ("values", key, flip_in(arrays[key], offset - ranges[key][0], bit))


def truncate(rng, fmt, src, arrays, dst):
    shutil.copyfile(src, dst)
    os.truncate(dst, int(rng.integers(src.stat().st_size)))
    return ("same_or_refuse",) if fmt in ("h5", "weights.h5") else ("refuse", [])


def _pick(rng, arrays, float_only=True):
    keys = [k for k, a in arrays.items() if a.dtype.kind == "f" or not float_only]
    return keys[rng.integers(len(keys))]


def drop(rng, fmt, src, arrays, dst):
    key = _pick(rng, arrays)
    write_mutated(fmt, src, arrays, dst, key, None)
    return ("refuse", [])


def rename(rng, fmt, src, arrays, dst):
    key = _pick(rng, arrays)
    suffixes = ["_x", ".\u00e9\u4e2d", "\t\x07", "\U0001f600"] + (["\udcff"] if fmt == "pth" else [])  # pickle
    new = key + suffixes[rng.integers(len(suffixes))]  # keeps a lone surrogate; the others' writers refuse it
    write_mutated(fmt, src, arrays, dst, key, arrays[key], new_key=new)
    return ("refuse", [convert.show(new)] if fmt in ("pth", "safetensors") else [])


def dtype(rng, fmt, src, arrays, dst):
    key = _pick(rng, arrays)
    kind = ["float16", "float64", "int32", "int64", "bool"][rng.integers(5)]
    new = arrays[key].astype(kind)
    write_mutated(fmt, src, arrays, dst, key, new)
    if kind.startswith("float"):
        return ("values", key, new)
    return ("refuse", [named(fmt, src, key)])


def shape(rng, fmt, src, arrays, dst):
    key = next(k for k in iter(lambda: _pick(rng, arrays), None) if arrays[k].size > 1)
    a = arrays[key]
    new = [a.reshape(-1), a[..., :1], a[None], a.reshape(a.shape[::-1])][rng.integers(4)]
    if new.shape == a.shape:  # a square matrix reversed: take a slice instead
        new = a[..., :1]
    write_mutated(fmt, src, arrays, dst, key, np.ascontiguousarray(new))
    return ("refuse", [convert.show(key)] if fmt in ("pth", "safetensors") else [])


def nonfinite(rng, fmt, src, arrays, dst):
    key = _pick(rng, arrays)
    new = arrays[key].copy()
    new.reshape(-1)[rng.integers(new.size)] = [np.nan, np.inf, -np.inf][rng.integers(3)]
    write_mutated(fmt, src, arrays, dst, key, new)
    return ("refuse", ["non-finite", "--allow_nonfinite", named(fmt, src, key)])


def named(fmt, src, key) -> str:
    """How a refusal names source ``key``: the state_dict key, or the Keras layer's name."""
    if fmt in ("pth", "safetensors"):
        return convert.show(key)
    if fmt == "h5":
        return key.split("/")[0]
    import h5py

    with h5py.File(h5_source(fmt, src), "r") as f:  # Keras 3: layers/<group>/vars/<i>, the name an attribute
        return str(f[key.rsplit("/", 1)[0]].attrs["name"])


def write_mutated(fmt, src, arrays, dst, key, value, new_key=None):
    """``arrays`` with ``key`` replaced by ``value`` (dropped when None, renamed to ``new_key``), written
    by the format's own writer (torch.save, safetensors, h5py on a copy of the Keras file, zipped again
    for ``.keras``)."""
    if fmt in ("pth", "safetensors"):
        state = {(new_key if k == key and new_key else k): (value if k == key else a) for k, a in arrays.items()
                 if k != key or value is not None}
        if fmt == "pth":
            import torch
            torch.save({k: torch.from_numpy(np.array(a)) for k, a in state.items()}, dst)
        else:
            from safetensors.numpy import save_file
            save_file(state, str(dst))
        return
    import h5py

    if fmt == "keras":
        with zipfile.ZipFile(src) as z:
            members = {name: z.read(name) for name in z.namelist()}
        inner = dst.with_name(dst.name + ".h5")
        inner.write_bytes(members["model.weights.h5"])
        write_mutated("weights.h5", inner, arrays, inner, key, value, new_key)
        members["model.weights.h5"] = inner.read_bytes()
        inner.unlink()
        with zipfile.ZipFile(dst, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return
    if dst != src:
        shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        del f[key]
        if value is not None:
            f[new_key or key] = value


CORRUPTIONS = {"flip": flip, "truncate": truncate, "drop": drop, "rename": rename, "dtype": dtype, "shape": shape,
               "nonfinite": nonfinite}
