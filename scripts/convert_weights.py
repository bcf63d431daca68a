"""Convert published torchvision / Keras ImageNet weights into a tl_jax store.

    python scripts/convert_weights.py --arch resnet50 --source torchvision --output weights/resnet50_tv
    python scripts/convert_weights.py --arch resnet50 --source keras --input resnet50_weights.h5 --output DIR

Without ``--input`` the canonical file is downloaded into ``$TL_JAX_CACHE`` (default
``~/.cache/tl_jax``). The output is written atomically: on any error no output
directory is left behind. Load the result with ``tl_jax.load_pretrained(DIR)``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import tl_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tl_jax.models import registry  # noqa: E402
from tl_jax.weights.convert import ConversionError  # noqa: E402
from tl_jax.weights.fetch import FetchError  # noqa: E402


def _converter(source: str):
    """The reader for each source; they pick the family's name map from the registry themselves."""
    if source == "torchvision":
        from tl_jax.weights.torchvision import convert_torchvision
        return convert_torchvision
    from tl_jax.weights.keras import convert_keras
    return convert_keras


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="e.g. resnet50, vgg16_bn, inception_v3")
    p.add_argument("--source", required=True, choices=registry.SOURCES)
    p.add_argument("--input", type=Path, help="local weight file (.pth / .h5); default: download it")
    p.add_argument("--output", type=Path, required=True, help="directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return p.parse_args(argv)


def convert(arch: str, source: str, output: Path, input_file: Path | None = None,
            overwrite: bool = False) -> dict:
    """Fetch or read, convert, save; returns a summary dict. Raises on any problem."""
    from tl_jax.weights import fetch, store

    info = registry.info(arch, source)  # unknown arch: lists the available ones
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    start = time.perf_counter()
    path = input_file if input_file is not None else fetch.fetch(info.arch, info.source)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    variables = _converter(info.source)(info.arch, path)
    num_classes = int(variables["params"]["head"]["bias"].shape[0])
    metadata = store.build_metadata(info.arch, info.source, num_classes, source_file=path)
    store.save_pretrained(output, variables, metadata, overwrite=overwrite)
    n_params = sum(a.size for a in _leaves(variables["params"]))
    return {"arch": info.arch, "source": info.source, "num_classes": num_classes, "params": n_params,
            "seconds": time.perf_counter() - start, "output": str(output)}


def _leaves(tree):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        s = convert(args.arch, args.source, args.output, args.input, args.overwrite)
    except (ConversionError, FetchError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted {s['arch']} ({s['source']}, {s['num_classes']} classes): {s['params']:,} params "
          f"in {s['seconds']:.1f} s -> {s['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
