"""Strict, table-driven weight conversion.

A name map is a list of rules ``(source regex, target path template, transform)``.
Every source array must match a rule (a ``None`` transform drops it on purpose,
e.g. ``num_batches_tracked``), and every leaf of the target variables must be
filled exactly once with the right shape. Anything else raises
:class:`ConversionError` naming the missing keys, the unexpected keys and the
first shape mismatch, before anything is written.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from flax import traverse_util

Transform = Callable[[np.ndarray], np.ndarray] | None
Rule = tuple[str, str, Transform]


class ConversionError(ValueError):
    """The source weights do not fit the target model."""


# Transforms shared by the name maps.
def copy(a: np.ndarray) -> np.ndarray:
    return a


def conv_oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (2, 3, 1, 0))


def linear_to_dense(a: np.ndarray) -> np.ndarray:
    return a.T


def transposed(a: np.ndarray, axes: Sequence[int], slab_axis: int, slab: int) -> np.ndarray:
    """``np.transpose(a, axes)`` as a C-contiguous array, copied ``slab`` indices of ``slab_axis`` at a time.

    numpy copies a permuted view in one pass over the whole array, missing the cache on one side: VGG's fc6
    (103M floats) took 0.9 s each way here. Thin slabs keep both sides in cache (0.26 s and 0.56 s).
    """
    out = np.empty([a.shape[i] for i in axes], a.dtype)
    at = list(axes).index(slab_axis)
    for start in range(0, a.shape[slab_axis], slab):
        part = slice(start, start + slab)
        out[(slice(None),) * at + (part,)] = a[(slice(None),) * slab_axis + (part,)].transpose(axes)
    return out


def show(name: str) -> str:
    """A source key as printed in errors: as is, or quoted with escapes when it would not print
    (a damaged file can hold keys with control characters or lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return ascii(name)
    return name if name.isprintable() else ascii(name)


def apply_rules(source: Mapping[str, np.ndarray], rules: Sequence[Rule]
                ) -> tuple[dict[tuple[str, ...], tuple[str, np.ndarray]], list[str]]:
    """Map source names to target paths with the first matching rule.

    Returns ``(entries, unmatched)``: ``entries[path] = (source_name, array)``
    with ``path`` like ``("params", "layer1", "block0", "conv1", "kernel")``.
    """
    compiled = [(re.compile(pattern), template, fn) for pattern, template, fn in rules]
    entries: dict[tuple[str, ...], tuple[str, np.ndarray]] = {}
    unmatched: list[str] = []
    for name, array in source.items():
        if not isinstance(name, str):
            raise ConversionError(f"source key {name!r} ({type(name).__name__}) is not a parameter name")
        for regex, template, fn in compiled:
            m = regex.fullmatch(name)
            if m is None:
                continue
            if fn is not None:
                path = tuple(m.expand(template).split("/"))
                if path in entries:
                    raise ConversionError(f"source keys {entries[path][0]!r} and {name!r} both map to "
                                          f"{'/'.join(path)}")
                array = np.asarray(array)
                try:
                    entries[path] = (name, fn(array))
                except (ValueError, TypeError, IndexError) as e:  # e.g. a kernel that lost a dimension
                    raise ConversionError(f"source key {show(name)} {array.dtype}{list(array.shape)} cannot be "
                                          f"converted to {'/'.join(path)} ({type(e).__name__}: {e})") from e
            break
        else:
            unmatched.append(name)
    return entries, unmatched


def assemble(template: Mapping[str, Any], entries: Mapping[tuple[str, ...], tuple[str, np.ndarray]],
             unmatched: Iterable[str] = (), *, what: str = "weights") -> dict[str, Any]:
    """Fill every leaf of ``template`` (a tree of shapes) from ``entries``; strict.

    The result holds float32 (or the template's dtype) numpy arrays with the
    template's structure.
    """
    flat_t = traverse_util.flatten_dict(dict(template))
    unexpected = [show(n) for n in unmatched] + [f"{show(src)} (-> {'/'.join(p)})" for p, (src, _) in entries.items()
                                                 if p not in flat_t]
    missing = ["/".join(p) for p in flat_t if p not in entries]
    mismatch = next((f"{show(entries[p][0])} -> {'/'.join(p)}: source {entries[p][1].shape} vs target {t.shape}"
                     for p, t in flat_t.items() if p in entries and entries[p][1].shape != tuple(t.shape)),
                    None)
    not_float = next((f"{show(entries[p][0])} -> {'/'.join(p)}: source {entries[p][1].dtype} vs target {t.dtype}"
                      for p, t in flat_t.items() if p in entries and np.dtype(t.dtype).kind == "f"
                      and entries[p][1].dtype.kind != "f" and "float" not in entries[p][1].dtype.name), None)
    if missing or unexpected or mismatch or not_float:
        lines = [f"{what} do not match the model:"]
        if missing:
            lines.append(f"  missing {len(missing)} target keys, first: {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} source keys, first: {', '.join(unexpected[:5])}")
        if mismatch:
            lines.append(f"  first shape mismatch: {mismatch}")
        if not_float:  # integers, booleans or strings where a weight belongs
            lines.append(f"  first non-float source: {not_float}")
        raise ConversionError("\n".join(lines))
    return traverse_util.unflatten_dict(
        {p: np.asarray(entries[p][1], dtype=t.dtype) for p, t in flat_t.items()})
