"""TFDS-style split strings (``train``, ``train[:90%]``, ``test[100:]``) for our own sources.

The folder and digits sources accept the same slicing syntax as TFDS so that a config can
hold out part of a single folder (``train[:90%]`` / ``train[90%:]``) exactly as it does for
a TFDS dataset. Slices apply to a list that the source has already put in a fixed, seeded
order, so two slices of the same split are disjoint.
"""
from __future__ import annotations

import re

_SPLIT = re.compile(r"^\s*(?P<base>[A-Za-z_][\w\-]*)\s*(?:\[(?P<start>[^:\]]*):(?P<end>[^\]]*)\])?\s*$")
_BOUND = re.compile(r"^\s*(?P<num>-?\d+(?:\.\d+)?)\s*(?P<pct>%?)\s*$")


def parse(split: str) -> tuple[str, str, str]:
    """``"train[:90%]"`` -> ``("train", "", "90%")``."""
    m = _SPLIT.match(split)
    if not m:
        raise ValueError(f"cannot parse split {split!r}; expected e.g. 'train', 'train[:90%]', 'test[10:200]'")
    return m["base"], (m["start"] or "").strip(), (m["end"] or "").strip()


def _bound(text: str, n: int, default: int, split: str) -> int:
    if not text:
        return default
    m = _BOUND.match(text)
    if not m:
        raise ValueError(f"bad slice bound {text!r} in split {split!r}")
    v = float(m["num"])
    if m["pct"]:
        v = round(n * v / 100.0)
    elif v != int(v):
        raise ValueError(f"absolute slice bounds must be integers, got {text!r} in split {split!r}")
    v = int(v)
    if v < 0:
        v += n
    return min(max(v, 0), n)


def slice_range(split: str, n: int) -> tuple[str, int, int]:
    """The base name and the ``[start, end)`` range a split string selects out of ``n`` items.

    Percent bounds round to the nearest item, so ``x[:90%]`` and ``x[90%:]`` partition ``x``.
    """
    base, start, end = parse(split)
    lo, hi = _bound(start, n, 0, split), _bound(end, n, n, split)
    return base, lo, max(lo, hi)
