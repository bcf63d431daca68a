"""Find the published ImageNet weight files in the caches users already have, else download them.

Which file and how to check it is the registry's (``ModelConfig.weights_for(tag)``; a test keeps
it equal to what torchvision's weight enums, ``keras.applications`` and timm download):
torchvision's files carry a prefix of their sha256 in the name, checked as ``torch.hub`` does;
the Keras files are checked against the md5 that keras.applications pins; timm and transformers
files come from the Hugging Face Hub through ``huggingface_hub``, which checks and caches them.

Before the network, the frameworks' own caches are searched: ``$TORCH_HOME/hub/checkpoints``
(torch.hub's, default ``~/.cache/torch``), ``$KERAS_HOME/models`` (``keras.utils.get_file``'s,
default ``~/.keras``), the Hugging Face cache (``$HF_HOME`` / ``$HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1``
is honoured) and our own (``$TL_JAX_CACHE``). Offline, nothing may hang: a connection (DNS
included) gets ``connect_timeout`` seconds, each read ``read_timeout``, no retries, and the error
names every place looked at and how to convert a file obtained some other way (``--input``).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import urllib.error
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


def _digest(published: registry.WeightsFile, url: str) -> tuple[str, str] | None:
    """``(hash algorithm, expected hex digest or its prefix)`` of the file at ``url``, if known."""
    if url == published.url and published.hash_name:
        return published.hash_name, published.digest
    if published.hash_name in ("sha256", ""):
        m = _TORCH_HASH.search(url.rsplit("/", 1)[-1])
        return ("sha256", m.group(1)) if m else None
    return None


def _offline_hint(arch: str, source: str) -> str:
    what = "the save_pretrained directory" if source == "hf" else "FILE"
    return (f"If this machine is offline, download the file elsewhere and convert it with --input: "
            f"python scripts/convert_weights.py --arch {arch} --source {source} --input {what} --output DIR")


def torch_hub_dir() -> Path:
    """torch.hub's checkpoint cache: ``$TORCH_HOME/hub/checkpoints`` (``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``)."""
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch"
    return Path(home) / "hub" / "checkpoints"


def keras_cache_dir() -> Path:
    """``keras.utils.get_file``'s cache for applications: ``$KERAS_HOME/models`` (default ``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def _hub_cached(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def _hub_download(repo_id: str, filenames: tuple[str, ...], connect_timeout: float, read_timeout: float) -> Path:
    """``hf_hub_download`` each file, after one quick reachability check.

    ``huggingface_hub`` retries a refused or timed-out connection five times with back-off (about
    30 s); offline that is the common case, so one request (through the same proxies) goes first
    and an unreachable Hub fails at once. Any HTTP answer, even an error status, means reachable.
    """
    from huggingface_hub import constants, hf_hub_download

    if constants.HF_HUB_OFFLINE:
        raise OSError("HF_HUB_OFFLINE is set")
    try:
        _open(f"{constants.ENDPOINT}/{repo_id}/resolve/main/{filenames[0]}", connect_timeout, read_timeout).close()
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as e:
        raise OSError(f"{constants.ENDPOINT} is unreachable ({getattr(e, 'reason', None) or e})") from e
    paths = [Path(hf_hub_download(repo_id, f, etag_timeout=connect_timeout)) for f in filenames]
    return paths[0]


def _hub_files(model_cfg: registry.ModelConfig, weights: registry.WeightsFile) -> tuple[str, ...]:
    return (weights.hub[1], "config.json") if model_cfg.source == "hf" else (weights.hub[1],)


def locate(arch: str, source: str, weights: str | None = None, directory: str | os.PathLike | None = None
           ) -> tuple[Path | None, list[str]]:
    """``(cached file or None, places looked at)`` for the published weights, without any network."""
    model_cfg = registry.model_config(arch, source)
    published = model_cfg.weights_for(weights)
    looked: list[str] = []
    if published.url:
        name = published.filename
        dirs = [torch_hub_dir()] if model_cfg.source in ("torchvision", "timm") else [keras_cache_dir()]
        dirs.append(Path(directory or cache_dir()) / model_cfg.source)
        for d in dirs:
            looked.append(str(d / name))
            if (d / name).is_file():
                return d / name, looked
    if published.hub is not None:
        repo_id, filename = published.hub
        looked.append(f"the Hugging Face cache (repo {repo_id}, {filename})")
        try:
            found = [_hub_cached(repo_id, f) for f in _hub_files(model_cfg, published)]
        except ImportError:
            looked[-1] += ": huggingface_hub is not installed"
            found = [None]
        if all(found):
            return (found[0].parent if model_cfg.source == "hf" else found[0]), looked
    return None, looked


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


def fetch(arch: str, source: str, directory: str | os.PathLike | None = None, *, weights: str | None = None,
          url: str | None = None, connect_timeout: float = CONNECT_TIMEOUT_S,
          read_timeout: float = READ_TIMEOUT_S) -> Path:
    """The local path of the published weights of ``(arch, source)`` (tag ``weights``), downloading if needed.

    A cached file is used first (see the module docstring). For ``hf`` the result is the
    snapshot directory (``model.safetensors`` + ``config.json``). A direct download goes to a
    temporary file in our cache directory, is checked against the published hash and only then
    renamed to its final name, so the cache never holds a partial or corrupt file under a valid name.
    """
    model_cfg = registry.model_config(arch, source)
    published = model_cfg.weights_for(weights)
    if url is None:
        found, looked = locate(arch, source, weights, directory)
        if found is not None:
            return found
    else:
        looked = []
    if url is None and not published.url:
        repo_id, _ = published.hub
        try:
            path = _hub_download(repo_id, _hub_files(model_cfg, published), connect_timeout, read_timeout)
        except ImportError as e:
            raise FetchError(f"downloading {model_cfg.source} weights needs huggingface_hub: pip install 'tl_jax[hub]'. "
                             f"{_offline_hint(model_cfg.arch, model_cfg.source)}") from e
        except Exception as e:  # huggingface_hub raises its own types for offline, missing and gated repos
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise FetchError(f"no cached {model_cfg.source} weights for {model_cfg.arch} ({published.tag}); looked in "
                             f"{'; '.join(looked)}; download from {repo_id} failed: {reason}. "
                             f"{_offline_hint(model_cfg.arch, model_cfg.source)}") from e
        return path.parent if model_cfg.source == "hf" else path
    return _download(model_cfg, url or published.url, published, Path(directory or cache_dir()) / model_cfg.source, looked,
                     connect_timeout, read_timeout)


def _download(model_cfg: registry.ModelConfig, url: str, published: registry.WeightsFile, folder: Path, looked: list[str],
              connect_timeout: float, read_timeout: float) -> Path:
    target = folder / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    # A URL given by the caller is checked against the digest in its own file name, as torch.hub does.
    digest = _digest(published, url)
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
                where = f" No cached copy in {'; '.join(looked)}." if looked else ""
                raise FetchError(f"could not download {model_cfg.source} weights for {model_cfg.arch} from {url}: "
                                 f"{reason}.{where} {_offline_hint(model_cfg.arch, model_cfg.source)}") from e
        if digest and not h.hexdigest().startswith(digest[1]):
            raise FetchError(f"{url} downloaded with {digest[0]} {h.hexdigest()}, expected {digest[1]}...: "
                             f"corrupt or changed file. {_offline_hint(model_cfg.arch, model_cfg.source)}")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
