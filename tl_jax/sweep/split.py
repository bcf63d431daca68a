"""Splitting a model at a stage boundary with a Flax method interceptor (no model API needed).

The prefix runs the model until the module of stage ``d - 1`` returns and keeps that output; each
member runs the whole model with the modules of stages ``< d`` replaced by it (earlier ones
skipped, so nothing of the prefix is computed again)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax


def split(variables: Mapping[str, Any], stage_names: Sequence[str], depth: int) -> tuple[dict, dict]:
    """(prefix, suffix) variables: top-level entries of stages ``< depth`` and the rest."""
    frozen = set(stage_names[:depth])
    pre, suf = {}, {}
    for col in ("params", "batch_stats"):
        tree = variables.get(col, {})
        unknown = [k for k in tree if k not in stage_names]
        if unknown:
            raise ValueError(f"variables {col}/{unknown[0]} is not a stage of {tuple(stage_names)}")
        pre[col] = {k: v for k, v in tree.items() if k in frozen}
        suf[col] = {k: v for k, v in tree.items() if k not in frozen}
    return pre, suf


def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return {col: {**a.get(col, {}), **b.get(col, {})} for col in ("params", "batch_stats")}


class _Captured(Exception):
    def __init__(self, value: Any):
        super().__init__("prefix output")
        self.value = value


def _stage_call(context: Any, names: Sequence[str]) -> bool:
    path = context.module.path
    return context.method_name == "__call__" and len(path) == 1 and path[0] in names


def prefix_apply(model: Any, depth: int, shared: Mapping[str, Any], images: jax.Array, train: bool) -> Any:
    """The output of stage ``depth - 1`` (None when nothing is frozen): the frozen prefix, once."""
    if depth == 0:
        return None
    last = model.stage_names[depth - 1]

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _stage_call(context, (last,)):
            raise _Captured(out)
        return out
    try:
        with nn.intercept_methods(capture):
            model.apply(shared, images, train=train)
    except _Captured as c:
        return c.value
    raise ValueError(f"{type(model).__name__} has no top-level module {last!r}: cannot share its prefix")


def suffix_apply(model: Any, depth: int, variables: Mapping[str, Any], images: jax.Array, features: Any,
                 **kwargs: Any) -> Any:
    """``model.apply`` with stages ``< depth`` replaced by ``features`` (the prefix's output)."""
    if depth == 0:
        return model.apply(variables, images, **kwargs)
    frozen, last = model.stage_names[:depth], model.stage_names[depth - 1]

    def replace(next_fun, args, kwargs_, context):
        if _stage_call(context, frozen):
            return features if context.module.path[0] == last else args[0]
        return next_fun(*args, **kwargs_)
    with nn.intercept_methods(replace):
        return model.apply(variables, images, **kwargs)
