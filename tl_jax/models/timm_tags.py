"""timm's pretrained tags whose architecture is one of our ports, as one declarative table.

Each row: ``model.tag``, the train-time ``input_size`` and ``crop_pct`` / ``interpolation`` /
mean-std of its ``pretrained_cfg`` (what timm's ``resolve_data_config`` gives by default),
and the ImageNet-1k top-1 timm publishes in ``results/results-imagenet.csv`` with the size and
crop it was measured at (often timm's larger ``test_input_size``). ``tests/test_registry_sources.py``
keeps the preprocessing columns equal to the installed timm's ``pretrained_cfg``. The files
live on the Hugging Face Hub as ``timm/<model>.<tag>/model.safetensors``.

Left out: ``resnet50.bamboo`` (no classifier). ``None``: timm publishes no top-1 for the tag.
"""
from __future__ import annotations

# name, input size, crop_pct, interpolation, mean/std ("imagenet" or "half": 0.5), top-1, its size, its crop
TIMM_TAGS: tuple[tuple[str, int, float, str, str, float | None, int, float], ...] = (
    ("resnet18.a1_in1k", 224, 0.95, "bicubic", "imagenet", 73.158, 288, 1.0),
    ("resnet18.a2_in1k", 224, 0.95, "bicubic", "imagenet", 72.372, 288, 1.0),
    ("resnet18.a3_in1k", 160, 0.95, "bicubic", "imagenet", 68.254, 224, 0.95),
    ("resnet18.tv_in1k", 224, 0.875, "bilinear", "imagenet", 69.760, 224, 0.875),
    ("resnet18.gluon_in1k", 224, 0.875, "bicubic", "imagenet", 70.838, 224, 0.875),
    ("resnet18.fb_ssl_yfcc100m_ft_in1k", 224, 0.875, "bilinear", "imagenet", 72.594, 224, 0.875),
    ("resnet18.fb_swsl_ig1b_ft_in1k", 224, 0.875, "bilinear", "imagenet", 73.282, 224, 0.875),
    ("resnet34.a1_in1k", 224, 0.95, "bicubic", "imagenet", 77.918, 288, 1.0),
    ("resnet34.a2_in1k", 224, 0.95, "bicubic", "imagenet", 77.158, 288, 1.0),
    ("resnet34.a3_in1k", 160, 0.95, "bicubic", "imagenet", 72.970, 224, 0.95),
    ("resnet34.bt_in1k", 224, 0.875, "bicubic", "imagenet", 76.480, 288, 0.95),
    ("resnet34.tv_in1k", 224, 0.875, "bilinear", "imagenet", None, 224, 0.875),
    ("resnet34.gluon_in1k", 224, 0.875, "bicubic", "imagenet", 74.578, 224, 0.875),
    ("resnet34.ra4_e3600_r224_in1k", 224, 0.9, "bicubic", "half", None, 224, 0.9),
    ("resnet50.a1_in1k", 224, 0.95, "bicubic", "imagenet", 81.214, 288, 1.0),
    ("resnet50.a1h_in1k", 176, 0.9, "bicubic", "imagenet", 80.676, 224, 1.0),
    ("resnet50.a2_in1k", 224, 0.95, "bicubic", "imagenet", 80.772, 288, 1.0),
    ("resnet50.a3_in1k", 160, 0.95, "bicubic", "imagenet", 78.048, 224, 0.95),
    ("resnet50.b1k_in1k", 224, 0.95, "bicubic", "imagenet", 80.706, 288, 1.0),
    ("resnet50.b2k_in1k", 224, 0.95, "bicubic", "imagenet", 80.454, 288, 1.0),
    ("resnet50.c1_in1k", 224, 0.95, "bicubic", "imagenet", 80.912, 288, 1.0),
    ("resnet50.c2_in1k", 224, 0.95, "bicubic", "imagenet", 80.870, 288, 1.0),
    ("resnet50.d_in1k", 224, 0.95, "bicubic", "imagenet", 80.972, 288, 1.0),
    ("resnet50.ram_in1k", 224, 0.875, "bicubic", "imagenet", 79.976, 288, 0.95),
    ("resnet50.am_in1k", 224, 0.875, "bicubic", "imagenet", 78.998, 224, 0.875),
    ("resnet50.ra_in1k", 224, 0.875, "bicubic", "imagenet", 79.836, 288, 0.95),
    ("resnet50.bt_in1k", 224, 0.875, "bicubic", "imagenet", 79.640, 288, 0.95),
    ("resnet50.tv2_in1k", 176, 0.875, "bilinear", "imagenet", 80.850, 224, 0.965),
    ("resnet50.tv_in1k", 224, 0.875, "bilinear", "imagenet", 76.130, 224, 0.875),
    ("resnet50.gluon_in1k", 224, 0.875, "bicubic", "imagenet", 77.580, 224, 0.875),
    ("resnet50.fb_ssl_yfcc100m_ft_in1k", 224, 0.875, "bilinear", "imagenet", 79.234, 224, 0.875),
    ("resnet50.fb_swsl_ig1b_ft_in1k", 224, 0.875, "bilinear", "imagenet", 81.182, 224, 0.875),
    ("resnet101.a1h_in1k", 224, 0.95, "bicubic", "imagenet", 82.778, 288, 1.0),
    ("resnet101.a1_in1k", 224, 0.95, "bicubic", "imagenet", 82.322, 288, 1.0),
    ("resnet101.a2_in1k", 224, 0.95, "bicubic", "imagenet", 82.236, 288, 1.0),
    ("resnet101.a3_in1k", 160, 0.95, "bicubic", "imagenet", 79.814, 224, 0.95),
    ("resnet101.tv2_in1k", 176, 0.875, "bilinear", "imagenet", 81.890, 224, 0.965),
    ("resnet101.tv_in1k", 224, 0.875, "bilinear", "imagenet", 77.376, 224, 0.875),
    ("resnet101.gluon_in1k", 224, 0.875, "bicubic", "imagenet", 79.310, 224, 0.875),
    ("resnet152.a1h_in1k", 224, 0.95, "bicubic", "imagenet", 83.450, 288, 1.0),
    ("resnet152.a1_in1k", 224, 0.95, "bicubic", "imagenet", 82.732, 288, 1.0),
    ("resnet152.a2_in1k", 224, 0.95, "bicubic", "imagenet", 82.608, 288, 1.0),
    ("resnet152.a3_in1k", 160, 0.95, "bicubic", "imagenet", 80.546, 224, 0.95),
    ("resnet152.tv2_in1k", 176, 0.875, "bilinear", "imagenet", 82.288, 224, 0.965),
    ("resnet152.tv_in1k", 224, 0.875, "bilinear", "imagenet", 78.322, 224, 0.875),
    ("resnet152.gluon_in1k", 224, 0.875, "bicubic", "imagenet", 79.694, 224, 0.875),
    *((f"vgg{d}{bn}.tv_in1k", 224, 0.875, "bilinear", "imagenet", top1, 224, 0.875)
      for (d, bn), top1 in {(11, ""): 69.022, (11, "_bn"): 70.382, (13, ""): 69.932, (13, "_bn"): 71.588,
                            (16, ""): 71.592, (16, "_bn"): 73.370, (19, ""): 72.378, (19, "_bn"): 74.216}.items()),
    ("inception_v3.tv_in1k", 299, 0.875, "bicubic", "half", 77.434, 299, 0.875),
    ("inception_v3.tf_in1k", 299, 0.875, "bicubic", "half", 77.862, 299, 0.875),
    ("inception_v3.tf_adv_in1k", 299, 0.875, "bicubic", "half", 77.592, 299, 0.875),
    ("inception_v3.gluon_in1k", 299, 0.875, "bicubic", "imagenet", 78.806, 299, 0.875),
)
