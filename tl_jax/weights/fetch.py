"""Download the published ImageNet weight files into a local cache, failing fast offline.

Which file and how to check it is the registry's (``ModelConfig.weights``; a test keeps it
equal to what torchvision's weight enums and ``keras.applications`` download): torchvision's
``IMAGENET1K_V1`` files carry a prefix of their sha256 in the name, checked as ``torch.hub``
does; the Keras files are checked against the md5 that keras.applications pins.

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

from tl_jax.models import registry

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
_TORCH_HASH = re.compile(r"-([a-f0-9]+)\.")


class FetchError(RuntimeError):
    """The weights could not be downloaded (offline, moved, corrupt)."""


def cache_dir() -> Path:
    """``$TL_JAX_CACHE`` or ``~/.cache/tl_jax``."""
    return Path(os.environ.get("TL_JAX_CACHE") or Path.home() / ".cache" / "tl_jax")


def _digest(info: registry.ModelConfig, url: str) -> tuple[str, str] | None:
    """``(hash algorithm, expected hex digest or its prefix)`` of the file at ``url``, if known."""
    if url == info.weights.url:
        return info.weights.hash_name, info.weights.digest
    if info.weights.hash_name == "sha256":
        m = _TORCH_HASH.search(url.rsplit("/", 1)[-1])
        return ("sha256", m.group(1)) if m else None
    return None


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
    info = registry.info(arch, source)
    url = url or info.weights.url
    target = Path(directory or cache_dir()) / info.source / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    # A URL given by the caller is checked against the digest in its own file name, as torch.hub does.
    digest = _digest(info, url)
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
