"""timm's pretrained tags whose architecture is one of our ports: one :class:`TimmTag` record per tag.

The fields are those of timm's own ``pretrained_cfg`` (``timm.models.<family>._cfg``), so each record
reads like the entry in timm's ``default_cfgs``: train-time ``input_size``, ``crop_pct`` /
``interpolation`` / ``mean`` / ``std`` (what timm's ``resolve_data_config`` gives by default), the
``test_input_size`` / ``test_crop_pct`` timm evaluates at (``None``: the train-time ones), the module
names ``first_conv`` / ``classifier``, plus the ImageNet-1k ``top1`` timm publishes in
``results/results-imagenet.csv`` (measured at the test size and crop; ``None``: not published).
``tests/test_weight_sources.py`` keeps every field but ``top1`` equal to the installed timm's
``pretrained_cfg``. The files live on the Hugging Face Hub as ``timm/<model>.<tag>/model.safetensors``.

Left out: ``resnet50.bamboo`` (no classifier).
"""
from __future__ import annotations

import dataclasses
import functools

from tl_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD

INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)   # timm's IMAGENET_INCEPTION_MEAN / _STD


@dataclasses.dataclass(frozen=True, kw_only=True)
class TimmTag:
    """One timm pretrained tag, with timm's ``pretrained_cfg`` field names."""
    name: str                      # "<architecture>.<tag>", as timm.list_pretrained spells it
    input_size: int                # train-time square input side
    crop_pct: float
    interpolation: str
    top1: float | None             # published ImageNet-1k top-1, %, at the test size and crop
    first_conv: str                # timm's module names of the first convolution and of the classifier
    classifier: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    test_input_size: int | None = None   # where timm evaluates; None: at input_size / crop_pct
    test_crop_pct: float | None = None

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def hf_hub_id(self) -> str:
        return f"timm/{self.name}"

    @property
    def test_size(self) -> tuple[int, float]:
        """``(input size, crop_pct)`` timm evaluates at, and so measured ``top1`` at."""
        return (self.input_size if self.test_input_size is None else self.test_input_size,
                self.crop_pct if self.test_crop_pct is None else self.test_crop_pct)


# timm's first_conv / classifier of each family (its resnet.py / vgg.py / inception_v3.py ``_cfg``).
_resnet = functools.partial(TimmTag, first_conv="conv1", classifier="fc")
_vgg = functools.partial(TimmTag, first_conv="features.0", classifier="head.fc")
_inception = functools.partial(TimmTag, first_conv="Conv2d_1a_3x3.conv", classifier="fc")

TIMM_TAGS: tuple[TimmTag, ...] = (
    _resnet(name="resnet18.a1_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=73.158,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet18.a2_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=72.372,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet18.a3_in1k", input_size=160, crop_pct=0.95, interpolation="bicubic", top1=68.254,
            test_input_size=224, test_crop_pct=0.95),
    _resnet(name="resnet18.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=69.760),
    _resnet(name="resnet18.gluon_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=70.838),
    _resnet(name="resnet18.fb_ssl_yfcc100m_ft_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear",
            top1=72.594),
    _resnet(name="resnet18.fb_swsl_ig1b_ft_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear",
            top1=73.282),
    _resnet(name="resnet34.a1_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=77.918,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet34.a2_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=77.158,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet34.a3_in1k", input_size=160, crop_pct=0.95, interpolation="bicubic", top1=72.970,
            test_input_size=224, test_crop_pct=0.95),
    _resnet(name="resnet34.bt_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=76.480,
            test_input_size=288, test_crop_pct=0.95),
    _resnet(name="resnet34.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=None),
    _resnet(name="resnet34.gluon_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=74.578),
    _resnet(name="resnet34.ra4_e3600_r224_in1k", input_size=224, crop_pct=0.9, interpolation="bicubic", top1=None,
            test_input_size=288, test_crop_pct=1.0, mean=INCEPTION_MEAN, std=INCEPTION_STD),
    _resnet(name="resnet50.a1_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=81.214,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet50.a1h_in1k", input_size=176, crop_pct=0.9, interpolation="bicubic", top1=80.676,
            test_input_size=224, test_crop_pct=1.0),
    _resnet(name="resnet50.a2_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=80.772,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet50.a3_in1k", input_size=160, crop_pct=0.95, interpolation="bicubic", top1=78.048,
            test_input_size=224, test_crop_pct=0.95),
    _resnet(name="resnet50.b1k_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=80.706,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet50.b2k_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=80.454,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet50.c1_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=80.912,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet50.c2_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=80.870,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet50.d_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=80.972,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet50.ram_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=79.976,
            test_input_size=288, test_crop_pct=0.95),
    _resnet(name="resnet50.am_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=78.998),
    _resnet(name="resnet50.ra_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=79.836,
            test_input_size=288, test_crop_pct=0.95),
    _resnet(name="resnet50.bt_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=79.640,
            test_input_size=288, test_crop_pct=0.95),
    _resnet(name="resnet50.tv2_in1k", input_size=176, crop_pct=0.875, interpolation="bilinear", top1=80.850,
            test_input_size=224, test_crop_pct=0.965),
    _resnet(name="resnet50.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=76.130),
    _resnet(name="resnet50.gluon_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=77.580),
    _resnet(name="resnet50.fb_ssl_yfcc100m_ft_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear",
            top1=79.234),
    _resnet(name="resnet50.fb_swsl_ig1b_ft_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear",
            top1=81.182),
    _resnet(name="resnet101.a1h_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=82.778,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet101.a1_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=82.322,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet101.a2_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=82.236,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet101.a3_in1k", input_size=160, crop_pct=0.95, interpolation="bicubic", top1=79.814,
            test_input_size=224, test_crop_pct=0.95),
    _resnet(name="resnet101.tv2_in1k", input_size=176, crop_pct=0.875, interpolation="bilinear", top1=81.890,
            test_input_size=224, test_crop_pct=0.965),
    _resnet(name="resnet101.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=77.376),
    _resnet(name="resnet101.gluon_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=79.310),
    _resnet(name="resnet152.a1h_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=83.450,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet152.a1_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=82.732,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet152.a2_in1k", input_size=224, crop_pct=0.95, interpolation="bicubic", top1=82.608,
            test_input_size=288, test_crop_pct=1.0),
    _resnet(name="resnet152.a3_in1k", input_size=160, crop_pct=0.95, interpolation="bicubic", top1=80.546,
            test_input_size=224, test_crop_pct=0.95),
    _resnet(name="resnet152.tv2_in1k", input_size=176, crop_pct=0.875, interpolation="bilinear", top1=82.288,
            test_input_size=224, test_crop_pct=0.965),
    _resnet(name="resnet152.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=78.322),
    _resnet(name="resnet152.gluon_in1k", input_size=224, crop_pct=0.875, interpolation="bicubic", top1=79.694),
    _vgg(name="vgg11.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=69.022),
    _vgg(name="vgg11_bn.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=70.382),
    _vgg(name="vgg13.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=69.932),
    _vgg(name="vgg13_bn.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=71.588),
    _vgg(name="vgg16.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=71.592),
    _vgg(name="vgg16_bn.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=73.370),
    _vgg(name="vgg19.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=72.378),
    _vgg(name="vgg19_bn.tv_in1k", input_size=224, crop_pct=0.875, interpolation="bilinear", top1=74.216),
    _inception(name="inception_v3.tv_in1k", input_size=299, crop_pct=0.875, interpolation="bicubic", top1=77.434,
               mean=INCEPTION_MEAN, std=INCEPTION_STD),
    _inception(name="inception_v3.tf_in1k", input_size=299, crop_pct=0.875, interpolation="bicubic", top1=77.862,
               mean=INCEPTION_MEAN, std=INCEPTION_STD),
    _inception(name="inception_v3.tf_adv_in1k", input_size=299, crop_pct=0.875, interpolation="bicubic", top1=77.592,
               mean=INCEPTION_MEAN, std=INCEPTION_STD),
    _inception(name="inception_v3.gluon_in1k", input_size=299, crop_pct=0.875, interpolation="bicubic", top1=78.806),
)
