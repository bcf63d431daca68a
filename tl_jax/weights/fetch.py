"""Download the published ImageNet weight files into a local cache, failing fast offline.

torchvision: the ``IMAGENET1K_V1`` weights (the ones whose published accuracies
the ports reproduce), read from torchvision's weight enums when torchvision is
installed, else from the table below (a test keeps the two equal). The file name
carries a prefix of the file's sha256, which is checked as ``torch.hub`` does.
Keras: the ``keras.applications`` HDF5 files with top, checked against the md5
that ``keras/src/applications/*.py`` pins.

Offline, a download must not hang: the connection (DNS included) gets
``connect_timeout`` seconds in total, each read ``read_timeout``, no retries, and
the error says how to convert a file obtained some other way (``--input FILE``).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import urllib.request
from pathlib import Path

TORCHVISION_BASE = "https://download.pytorch.org/models/"
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
    "vgg11": "vgg11-8a719046.pth", "vgg11_bn": "vgg11_bn-6002323d.pth",
    "vgg13": "vgg13-19584684.pth", "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16": "vgg16-397923af.pth", "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "vgg19": "vgg19-dcbb9e9d.pth", "vgg19_bn": "vgg19_bn-c79401a0.pth",
    "inception_v3": "inception_v3_google-0cc3c7bd.pth",
}

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
# arch -> (path under KERAS_BASE, md5 of the file)
KERAS_FILES = {
    "resnet50": ("resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5", "2cb95161c43110f7111970584f804107"),
    "resnet101": ("resnet/resnet101_weights_tf_dim_ordering_tf_kernels.h5", "f1aeb4b969a6efcfb50fad2f0c20cfc5"),
    "resnet152": ("resnet/resnet152_weights_tf_dim_ordering_tf_kernels.h5", "100835be76be38e30d865e96f2aaae62"),
    "vgg16": ("vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    "vgg19": ("vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
    "inception_v3": ("inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                     "9a0d58056eeedaa3f26cb7ebd46da564"),
}

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
_TORCH_HASH = re.compile(r"-([a-f0-9]+)\.")


class FetchError(RuntimeError):
    """The weights could not be downloaded (offline, moved, corrupt)."""


def cache_dir() -> Path:
    """``$TL_JAX_CACHE`` or ``~/.cache/tl_jax``."""
    return Path(os.environ.get("TL_JAX_CACHE") or Path.home() / ".cache" / "tl_jax")


def weights_url(arch: str, source: str) -> str:
    """The canonical published ImageNet weights of ``(arch, source)``."""
    from tl_jax.models import registry

    info = registry.info(arch, source)  # validates, resolves Keras aliases
    if info.source == "torchvision":
        try:
            import torchvision
        except ImportError:
            return TORCHVISION_BASE + TORCHVISION_FILES[info.arch]
        return torchvision.models.get_model_weights(info.arch).IMAGENET1K_V1.url
    if info.arch not in KERAS_FILES:
        raise ValueError(f"no published Keras weights known for {info.arch}")
    return KERAS_BASE + KERAS_FILES[info.arch][0]


def expected_digest(url: str, source: str, arch: str) -> tuple[str, str] | None:
    """``(hash algorithm, expected hex digest or prefix)`` for the file at ``url``, if known."""
    if source == "torchvision":
        m = _TORCH_HASH.search(url.rsplit("/", 1)[-1])
        return ("sha256", m.group(1)) if m else None
    entry = KERAS_FILES.get(arch)
    return ("md5", entry[1]) if entry and url.endswith(entry[0]) else None


def _offline_hint(arch: str, source: str) -> str:
    return (f"If this machine is offline, download the file elsewhere and convert it with --input FILE: "
            f"python scripts/convert_weights.py --arch {arch} --source {source} --input FILE --output DIR")


def _open(url: str, connect_timeout: float, read_timeout: float):
    """``urlopen`` under a hard deadline: socket timeouts do not cover DNS resolution."""
    box: dict = {}

    def target() -> None:
        try:
            box["response"] = urllib.request.urlopen(url, timeout=min(connect_timeout, read_timeout))
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name="tl_jax-fetch")
    t.start()
    t.join(connect_timeout)
    if t.is_alive():
        raise TimeoutError(f"no connection within {connect_timeout:g} s")
    if "error" in box:
        raise box["error"]
    response = box["response"]
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(read_timeout)
    return response


def fetch(arch: str, source: str, directory: str | os.PathLike | None = None, *, url: str | None = None,
          connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S) -> Path:
    """The path of the cached weight file of ``(arch, source)``, downloading it if needed.

    The download goes to a temporary file in the cache directory, is checked
    against the published hash and only then renamed to its final name, so the
    cache never holds a partial or corrupt file under a valid name.
    """
    from tl_jax.models import registry

    info = registry.info(arch, source)
    url = url or weights_url(info.arch, info.source)
    target = Path(directory or cache_dir()) / info.source / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    digest = expected_digest(url, info.source, info.arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.part-", dir=target.parent)
    try:
        h = hashlib.new(digest[0] if digest else "sha256")
        with os.fdopen(fd, "wb") as out:
            try:
                with _open(url, connect_timeout, read_timeout) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
            except (OSError, ValueError) as e:  # URLError, socket errors and timeouts are OSErrors
                reason = getattr(e, "reason", None) or e
                raise FetchError(f"could not download {info.source} weights for {info.arch} from {url}: "
                                 f"{reason}. {_offline_hint(info.arch, info.source)}") from e
        if digest and not h.hexdigest().startswith(digest[1]):
            raise FetchError(f"{url} downloaded with {digest[0]} {h.hexdigest()}, expected {digest[1]}...: "
                             f"corrupt or changed file. {_offline_hint(info.arch, info.source)}")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
