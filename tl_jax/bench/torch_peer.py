"""The equivalent torchvision fine-tuning step, for side-by-side throughput numbers.

What a careful PyTorch user would write: channels_last, cudnn.benchmark, frozen stages in eval
mode and run under ``no_grad``, SGD with momentum over the trainable parameters only. The stages
are those of the registry (``ModelConfig.torch_stages``), so ``frozen_depth`` means the same on
both sides. With ``dtype="bfloat16"`` the step runs under ``torch.autocast(device, torch.bfloat16)``
on CPU as on CUDA, as tl_jax computes in bf16; with ``"float32"`` no autocast (TF32 allowed on
CUDA; the result's ``tf32`` says so). Imports torch lazily.

With ``compiled=True`` the same step's forward and loss run under ``torch.compile`` (default mode;
AOTAutograd compiles their backward too; the optimizer step stays eager, as in most user code):
the strongest PyTorch peer. Its warm-up, where compilation happens, is timed apart (``compile_s``);
if compilation fails (no C++ compiler for inductor on CPU, an unsupported op), the result says so in
``error`` instead of raising, so a benchmark run keeps its other records.
"""
from __future__ import annotations

import re
import time
from typing import Any, Sequence

from tl_jax.models import registry

_EXPR = re.compile(r"([A-Za-z_]\w*)(?:\[(-?\d*)(:(-?\d*))?\])?")


def module(model: Any, expr: str) -> Any:
    """The torch module ``expr`` names in ``model``: ``"layer1"``, ``"features[0:5]"`` (a slice of a
    Sequential), ``"classifier[6]"`` (an item) or ``"flatten"`` (``torch.nn.Flatten()``)."""
    import torch.nn as nn

    if expr == "flatten":
        return nn.Flatten()
    m = _EXPR.fullmatch(expr)
    if m is None or (m.group(2) == "" and m.group(3) is None):
        raise ValueError(f"bad torch stage expression {expr!r}: use name, name[i] or name[a:b]")
    name, start, colon, stop = m.groups()
    if not isinstance(getattr(model, name, None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no submodule {name!r} (torch stage {expr!r})")
    mod = getattr(model, name)
    if start is None:
        return mod
    if colon:
        return mod[slice(int(start) if start else None, int(stop) if stop else None)]
    return mod[int(start)]


def stages(model: Any, torch_stages: Sequence[Sequence[str]]) -> list[Any]:
    """The torchvision model cut into tl_jax's stages, in forward order (head last): one
    ``nn.Sequential`` per stage of the modules its expressions name (see :func:`module`)."""
    import torch.nn as nn

    if not torch_stages:
        raise ValueError("no torch stages for this model")
    return [nn.Sequential(*(module(model, e) for e in exprs)) for exprs in torch_stages]


def torchvision_model(arch: str, num_classes: int = 1000) -> Any:
    """A randomly initialised torchvision ``arch`` (Inception v3 without the auxiliary head)."""
    import torchvision

    config = registry.model_config(arch, "torchvision")
    kw = {"aux_logits": False, "init_weights": False} if config.family == "inception" else {}
    return getattr(torchvision.models, config.arch)(weights=None, num_classes=num_classes, **kw)


def time_torch_step(arch: str, frozen_depth: int, *, batch: int, resolution: int, steps: int, warmup: int = 3,
                    num_classes: int = 1000, dtype: str = "bfloat16", compiled: bool = False) -> dict[str, Any]:
    """Images/s of the torchvision training step (median over ``steps`` single-step timings after
    ``warmup`` steps); ``compiled``: under ``torch.compile``, with the warm-up's seconds in ``compile_s``."""
    import torch

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"unknown dtype {dtype!r}; choose bfloat16 or float32")
    if warmup < 1 and compiled:
        raise ValueError("torch.compile needs warmup >= 1: the first step compiles")
    config = registry.model_config(arch, "torchvision")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = torchvision_model(config.arch, num_classes).to(dev).to(memory_format=torch.channels_last)
    parts = stages(model, config.torch_stages)
    if not 0 <= frozen_depth < len(parts):
        raise ValueError(f"frozen_depth={frozen_depth} out of range 0..{len(parts) - 1} for {config.arch}")
    frozen, trainable = parts[:frozen_depth], parts[frozen_depth:]
    for s in frozen:
        s.requires_grad_(False)
        s.eval()
    for s in trainable:
        s.train()
    opt = torch.optim.SGD([p for s in trainable for p in s.parameters()], lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, resolution, resolution, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    autocast = dtype == "bfloat16"
    device = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    result = {"peer": "torch_compile" if compiled else "torch", "torch": torch.__version__, "device": device,
              "dtype": dtype, "autocast": autocast, "tf32": dev == "cuda"}

    def forward_loss(x: Any, y: Any) -> Any:
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
            h = x
            with torch.no_grad():
                for s in frozen:
                    h = s(h)
            for s in trainable:
                h = s(h)
            return torch.nn.functional.cross_entropy(h.float(), y)

    if compiled:
        torch.compiler.reset()  # fresh caches: earlier depths' graphs neither count against the recompile limit nor linger
        forward_loss = torch.compile(forward_loss)

    def step() -> Any:
        loss = forward_loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    try:
        t = time.perf_counter()
        for _ in range(warmup):
            step()
        sync()
        warmup_s = time.perf_counter() - t
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
    except Exception as e:  # noqa: BLE001 - inductor fails in many ways; the record says how, in one line
        if not compiled:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return {**result, "error": f"torch.compile failed on {device}: {type(e).__name__}: {first}"}
    finally:
        if compiled:
            torch.compiler.reset()
    times.sort()
    med = times[len(times) // 2]
    if compiled:
        result.update(compile_mode="default", compile_s=warmup_s, warmup_steps=warmup)
    return {**result, "img_s": batch / med, "step_ms": med * 1e3}
