"""Integrity checks on source weight files, run before any conversion.

Weight files arrive truncated, bit-flipped or diverged. What each format can tell:

* a torch ``.pth`` (a zip since torch 1.6) stores a CRC-32 per entry, which ``torch.load`` does not
  check: :func:`verify_zip` reads every entry once and compares it (about 40 ms for ResNet-18's 46 MB);
* ``.keras`` archives are zips too; Python's ``zipfile`` checks each CRC when ``keras.py`` reads them;
* ``.safetensors``, HDF5 data and legacy (pre-1.6, non-zip) torch pickles carry no checksum: damage
  inside tensor data cannot be detected there, only converted faithfully, and then refused by
  :func:`check_finite` when it produced NaN or infinity.

Every refusal is a :class:`~tl_jax.weights.convert.ConversionError` (a ValueError, which the scripts
print as one line) naming the file and, where there is one, the key.
"""
from __future__ import annotations

import re
import zipfile
import zlib
from typing import Mapping

import numpy as np

from tl_jax.weights.convert import ConversionError

OVERRIDE = "pass --allow_nonfinite (allow_nonfinite=True) to convert it anyway"


class NonFiniteError(ConversionError):
    """Source weights hold NaN or infinity: a damaged file, or a training run that diverged."""


def describe(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for wrapping a low-level error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # torch colours parts of its messages
    text = text.splitlines()[0][:200] if text else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def verify_zip(path: str) -> None:
    """Refuse a zip with a damaged entry (CRC-32, header or directory), naming the file and the entry."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # reads every entry; returns the first whose CRC-32 or header is wrong
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise ConversionError(f"{path} is a damaged zip archive ({describe(e)})") from e
    if bad is not None:
        raise ConversionError(f"{path}: entry {bad!r} fails its CRC-32 check: the file is damaged or was altered "
                              "after it was written; download or copy it again")


def check_finite(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse the first floating-point array that holds NaN or infinity, naming ``where`` and its key."""
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind not in "fc" and "float" not in a.dtype.name:  # ml_dtypes' bfloat16 is kind "V"
            continue
        finite = np.isfinite(a)
        if finite.all():
            continue
        count = int(a.size - np.count_nonzero(finite))
        kinds = " and ".join(k for k, present in (("NaN", np.isnan(a).any()), ("infinity", np.isinf(a).any()))
                             if present)
        raise NonFiniteError(f"{where}: {name!r} holds {count} non-finite value(s) ({kinds}): the file is damaged "
                             f"or the training that wrote it diverged; {OVERRIDE}")


def check_float(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse the first array that is not floating point (Keras stores every weight as floats)."""
    odd = next((name for name, a in arrays.items() if np.asarray(a).dtype.kind != "f"), None)
    if odd is not None:
        raise ConversionError(f"{where}: {odd!r} holds {np.asarray(arrays[odd]).dtype} values, not float weights")


def check_keys(keys: object, where: str) -> None:
    """Refuse a state_dict whose keys are not all strings (a damaged or foreign pickle)."""
    odd = next((k for k in keys if not isinstance(k, str)), None)  # type: ignore[union-attr]
    if odd is not None:
        raise ConversionError(f"{where}: key {odd!r} ({type(odd).__name__}) is not a parameter name")
