"""The converters' rule tables run backwards: Flax variables -> a source framework's names and layouts.

A rule ``(source regex, target template, transform)`` maps ``layer1.0.conv2.weight`` to
``params/layer1/block0/conv2/kernel``. Its inverse swaps the two: the template becomes a regex over
our paths (each ``\\k`` a group), the regex a template (each group replaced by what ``\\k`` caught),
and the transform its inverse (:data:`INVERSES`). Every name made this way is checked by running it
forward through the *whole* table (first match wins there): it must come back to the same path, so
the two directions cannot drift apart. Strict like the forward direction: a leaf that no rule
produces, or an inverse that is not exact, is an :class:`ExportError` before anything is written.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flax import traverse_util

from tl_jax.weights import convert
from tl_jax.weights.convert import ConversionError, Rule
from tl_jax.weights.maps import vgg


class ExportError(ConversionError):
    """The variables have no layout in the requested target."""


def hwio_to_oihw(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (3, 2, 0, 1))


def dense_to_linear(a: np.ndarray) -> np.ndarray:
    return a.T


# Each forward transform of the rule tables -> its exact inverse (permutations and reshapes only).
INVERSES: dict[Callable, Callable] = {
    convert.copy: convert.copy,
    convert.conv_oihw_to_hwio: hwio_to_oihw,
    convert.linear_to_dense: dense_to_linear,
    **vgg.INVERSES,
}

_GROUP = re.compile(r"\((?!\?)")           # an opening capture group (not (?:...), (?P...))
_BACKREF = re.compile(r"\\(\d)")
_META = re.compile(r"[.^$*+?{}\[\]|()]")    # regex syntax left outside the groups: not invertible


def _source_template(pattern: str) -> str | None:
    """``layer(\\d)\\.(\\d+)\\.conv(\\d)\\.weight`` -> ``layer{1}.{2}.conv{3}.weight``; None if not a template."""
    out, depth, group, i = [], 0, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            if depth == 0:
                if pattern[i + 1].isalnum():
                    return None               # \d, \w outside a group: a class, not a literal
                out.append(pattern[i + 1])
            i += 2
            continue
        if c == "(":
            if not _GROUP.match(pattern, i) or depth > 0:
                return None                   # a non-capturing or nested group: numbering would shift
            group += 1
            out.append("{%d}" % group)
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0:
            if _META.match(c):
                return None
            out.append(c)
        i += 1
    return "".join(out)


def _target_regex(template: str) -> re.Pattern:
    """``params/layer\\1/block\\2/conv\\3/kernel`` -> a regex with a named group ``gK`` per ``\\K``."""
    parts, seen, pos = [], set(), 0
    for m in _BACKREF.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        k = m.group(1)
        parts.append(f"(?P=g{k})" if k in seen else f"(?P<g{k}>.+?)")
        seen.add(k)
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


def invert(rules: Sequence[Rule]) -> list[tuple[re.Pattern, str, Callable]]:
    """``(regex over our paths, source-name template, inverse transform)`` for every kept rule."""
    out = []
    for pattern, template, fn in rules:
        if fn is None:
            continue
        source = _source_template(pattern)
        if source is None:
            raise ExportError(f"rule {pattern!r} is not a literal name with groups: it cannot run backwards")
        refs = set(_BACKREF.findall(template))
        if set(re.findall(r"\{(\d)\}", source)) - refs:
            raise ExportError(f"rule {pattern!r}: the target {template!r} drops a part of the name")
        if fn not in INVERSES:
            raise ExportError(f"rule {pattern!r}: transform {fn.__name__} has no inverse")
        out.append((_target_regex(template), source, INVERSES[fn]))
    return out


def _forward(name: str, compiled: Sequence[tuple[re.Pattern, str, Any]]) -> tuple[str, Any] | None:
    """Where the forward table sends ``name`` (first match): (path, transform); None if no rule matches."""
    for regex, template, fn in compiled:
        m = regex.fullmatch(name)
        if m is not None:
            return (m.expand(template) if fn is not None else ""), fn
    return None


def to_source(variables: Mapping[str, Any], rules: Sequence[Rule], *, what: str = "export"
              ) -> dict[str, np.ndarray]:
    """Flax ``{"params", "batch_stats"}`` -> ``{source name: array}`` by ``rules`` run backwards; strict.

    Names the forward table drops on purpose (torch's ``bn.num_batches_tracked``) are written for
    every BatchNorm the table covers, as a zero int64 scalar: torch's strict loading expects them and
    they only count training steps. The result is in the variables' order.
    """
    inverse = invert(rules)
    compiled = [(re.compile(p), t, fn) for p, t, fn in rules]
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables)).items()}
    out: dict[str, np.ndarray] = {}
    missing = []
    for path, array in flat.items():
        name = _source_name(path, inverse, compiled)
        if name is None:
            missing.append(path)
            continue
        forward_fn = _forward(name, compiled)[1]
        back = INVERSES[forward_fn](array)
        if not np.array_equal(forward_fn(back), array):
            raise ExportError(f"{what}: {path} -> {name} does not convert back exactly")
        if name in out:
            raise ExportError(f"{what}: two variables map to {name}")
        out[name] = np.ascontiguousarray(back)
        if name.endswith("running_mean"):
            counter = name[:-len("running_mean")] + "num_batches_tracked"
            hit = _forward(counter, compiled)
            if hit is not None and hit[1] is None:
                out[counter] = np.zeros((), np.int64)
    if missing:
        raise ExportError(f"{what}: {len(missing)} variables have no name in the target layout, "
                          f"first: {', '.join(missing[:5])}")
    return out


def _source_name(path: str, inverse, compiled) -> str | None:
    """The first inverted name that the forward table sends back to ``path``."""
    for regex, template, _ in inverse:
        m = regex.fullmatch(path)
        if m is None:
            continue
        name = _fill(template, m)
        hit = _forward(name, compiled)
        if hit is not None and hit[0] == path:
            return name
    return None


def _fill(template: str, m: re.Match) -> str:
    groups = m.groupdict()
    return re.sub(r"\{(\d)\}", lambda g: groups[f"g{g.group(1)}"], template)
