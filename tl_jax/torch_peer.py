"""The equivalent torchvision fine-tuning step, for side-by-side throughput numbers.

What a careful PyTorch user would write: bf16 autocast on CUDA, channels_last,
cudnn.benchmark, frozen stages in eval mode and run under ``no_grad``, SGD with
momentum over the trainable parameters only. Stages follow tl_jax's stage names,
so ``frozen_depth`` means the same thing on both sides. Imports torch lazily.
"""
from __future__ import annotations

import time
from typing import Any


def _stages(model: Any, family: str) -> list[Any]:
    """The torchvision model cut into tl_jax's stages, in forward order (head last)."""
    import torch.nn as nn

    if family == "resnet":
        return [nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool), model.layer1, model.layer2,
                model.layer3, model.layer4, nn.Sequential(model.avgpool, nn.Flatten(), model.fc)]
    if family == "vgg":
        cuts = [i + 1 for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        blocks = [model.features[a:b] for a, b in zip([0] + cuts[:-1], cuts)]
        return blocks + [nn.Sequential(model.avgpool, nn.Flatten(), model.classifier[:6]), model.classifier[6]]
    if family == "inception":
        m = model
        stem = nn.Sequential(m.Conv2d_1a_3x3, m.Conv2d_2a_3x3, m.Conv2d_2b_3x3, m.maxpool1, m.Conv2d_3b_1x1,
                             m.Conv2d_4a_3x3, m.maxpool2)
        mixed = [m.Mixed_5b, m.Mixed_5c, m.Mixed_5d, m.Mixed_6a, m.Mixed_6b, m.Mixed_6c, m.Mixed_6d, m.Mixed_6e,
                 m.Mixed_7a, m.Mixed_7b, m.Mixed_7c]
        return [stem, *mixed, nn.Sequential(m.avgpool, m.dropout, nn.Flatten(), m.fc)]
    raise ValueError(f"no torchvision stages for family {family!r}")


def time_torch_step(arch: str, family: str, frozen_depth: int, batch: int, resolution: int, steps: int,
                    warmup: int = 3, num_classes: int = 1000, bf16: bool = True) -> dict[str, Any]:
    """Images/s of the torchvision training step (median over ``steps`` single-step timings)."""
    import torch
    import torchvision

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    kw = {"aux_logits": False, "init_weights": False} if family == "inception" else {}
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, **kw)
    model = model.to(dev).to(memory_format=torch.channels_last)
    stages = _stages(model, family)
    frozen, trainable = stages[:frozen_depth], stages[frozen_depth:]
    for s in frozen:
        s.requires_grad_(False)
    opt = torch.optim.SGD([p for s in trainable for p in s.parameters()], lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, resolution, resolution, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=dev)

    def step() -> Any:
        for s in frozen:
            s.eval()
        for s in trainable:
            s.train()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16 and dev == "cuda"):
            h = x
            with torch.no_grad():
                for s in frozen:
                    h = s(h)
            for s in trainable:
                h = s(h)
            loss = torch.nn.functional.cross_entropy(h.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    return {"peer": "torch", "torch": torch.__version__, "device": torch.cuda.get_device_name() if dev == "cuda"
            else "cpu", "img_s": batch / med, "step_ms": med * 1e3}
