"""Unusual image files decode to the documented layout: uint8 RGB, H x W x 3, as stored (no EXIF rotation).

CMYK JPEG, 16-bit PNG (gray and RGB), palette PNG with and without transparency, GIF, BMP, gray,
gray + alpha, RGBA, an EXIF-rotated JPEG, 1x1 images and a 6000x4000 photo, through both decoders
the project uses: the folder source of training (tf.data, evaluation and training transforms) and
the PIL path of prediction (``preprocess.prepare``). Expected pixels come from the arrays written
(lossless formats: alpha dropped, palette looked up, 16-bit reduced to its high byte) or, for
JPEG, from PIL, torchvision's decoder. A file neither decoder format can read fails at load with
its path.
"""
from __future__ import annotations

import numpy as np
import pytest

from tl_jax import preprocess
from tl_jax.data import make_dataset
from tl_jax.data.folder import UnreadableImagesError

S = 24
RAW = {"name": "raw", "channel_order": "RGB", "divisor": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
       "resize_size": S, "crop_size": S}
ORIENTATION = 0x0112  # EXIF tag


def _palette_rgb(image) -> np.ndarray:
    return np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)[np.asarray(image)]


def _pil_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_images(root) -> dict[str, tuple[str, np.ndarray]]:
    """One class folder per kind of file: ``{kind: (path, expected uint8 RGB pixels)}``."""
    from PIL import Image

    from tl_jax.data import tf_ops

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (S, S, 3), np.uint8)
    base[: S // 2, : S // 3] = (250, 10, 10)  # an asymmetric patch: a rotation would move it
    gray16 = rng.integers(0, 1 << 16, (S, S), np.uint16)
    rgb16 = rng.integers(0, 1 << 16, (S, S, 3), np.uint16)
    palette = Image.fromarray(base).quantize(32)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 CW to display"

    out = {}

    def add(kind, ext, save, expected):
        folder = root / kind
        folder.mkdir()
        path = folder / f"{kind}.{ext}"
        save(path)
        out[kind] = (str(path), expected(path))

    gray = base[..., 0]
    add("rgb_png", "png", Image.fromarray(base).save, lambda p: base)
    add("rgba_png", "png", Image.fromarray(np.dstack([base, gray]), "RGBA").save, lambda p: base)
    add("gray_png", "png", Image.fromarray(gray).save, lambda p: np.repeat(gray[..., None], 3, -1))
    add("gray_alpha_png", "png", Image.fromarray(np.dstack([gray, base[..., 1]]), "LA").save,
        lambda p: np.repeat(gray[..., None], 3, -1))
    add("palette_png", "png", palette.save, lambda p: _palette_rgb(palette))
    add("palette_transparent_png", "png", lambda p: palette.save(p, transparency=3), lambda p: _palette_rgb(palette))
    add("palette_gif", "gif", palette.save, lambda p: _palette_rgb(palette))
    add("bmp", "bmp", Image.fromarray(base).save, lambda p: base)
    add("gray16_png", "png", Image.fromarray(gray16).save, lambda p: np.repeat((gray16 >> 8)[..., None], 3, -1))
    add("rgb16_png", "png", lambda p: p.write_bytes(tf_ops.tf_module().io.encode_png(rgb16).numpy()),
        lambda p: (rgb16 >> 8).astype(np.uint8))
    add("cmyk_jpeg", "jpg", lambda p: Image.fromarray(base).convert("CMYK").save(p, quality=95), _pil_rgb)
    add("gray_jpeg", "jpg", lambda p: Image.fromarray(gray).save(p, quality=95), _pil_rgb)
    add("rgb_jpeg", "jpeg", lambda p: Image.fromarray(base).save(p, quality=95), _pil_rgb)
    add("exif_rotated_jpeg", "jpg", lambda p: Image.fromarray(base).save(p, quality=95, exif=exif.tobytes()),
        _pil_rgb)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return root, write_images(root)


def test_the_files_are_what_they_claim(images):
    """Guard the fixture: each file really has the mode, depth or tag under test."""
    from PIL import Image, ImageOps

    _, files = images
    modes = {kind: Image.open(path).mode for kind, (path, _) in files.items()}
    assert (modes["cmyk_jpeg"], modes["gray16_png"], modes["gray_alpha_png"], modes["rgba_png"]) == \
        ("CMYK", "I;16", "LA", "RGBA")
    assert modes["palette_png"] == modes["palette_gif"] == "P"
    assert "transparency" in Image.open(files["palette_transparent_png"][0]).info
    assert open(files["rgb16_png"][0], "rb").read()[24] == 16  # IHDR bit depth
    with Image.open(files["exif_rotated_jpeg"][0]) as im:
        assert im.getexif()[ORIENTATION] == 6
        rotated = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert not np.array_equal(rotated, files["exif_rotated_jpeg"][1])  # applying it would change the pixels


@pytest.mark.parametrize("train", [False, True])
def test_folder_source_decodes_every_format(images, train):
    """tf.data: evaluation (resize + crop at the stored size) and training (a whole-image crop, no flip)
    give the stored pixels exactly; labels identify the files (one class per kind)."""
    root, files = images
    kw = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False) if train else {}
    ds = make_dataset(f"folder:{root}", "train", batch_size=len(files), train=train, preprocessing=RAW,
                      image_size=S, num_threads=1, process_index=0, process_count=1, **kw)
    batch = next(iter(ds.batches(0)))
    assert batch["image"].shape == (len(files), S, S, 3)
    kinds = ds.class_names
    assert sorted(kinds) == sorted(files) and len(set(batch["label"].tolist())) == len(files)
    for image, label in zip(batch["image"], batch["label"]):
        kind = kinds[label]
        np.testing.assert_array_equal(image, files[kind][1].astype(np.float32), err_msg=kind)


def test_prediction_path_decodes_every_format(images):
    """PIL (``preprocess.prepare``, used by prediction): the same pixels as training's decoder."""
    from PIL import Image

    _, files = images
    for kind, (path, expected) in files.items():
        with Image.open(path) as im:
            np.testing.assert_array_equal(preprocess.prepare(im, RAW), expected.astype(np.float32), err_msg=kind)


def test_tiny_and_huge_images(tmp_path):
    """1x1 PNG and JPEG, and a 6000x4000 JPEG: decoded, resized and cropped to 16x16 by both paths."""
    from PIL import Image

    for kind in ("one_png", "one_jpeg", "huge"):
        (tmp_path / kind).mkdir()
    Image.new("RGB", (1, 1), (200, 30, 90)).save(tmp_path / "one_png" / "a.png")
    Image.new("RGB", (1, 1), (200, 30, 90)).save(tmp_path / "one_jpeg" / "a.jpg", quality=95)
    ramp = np.linspace(0, 255, 6000, dtype=np.float32)
    big = np.stack(np.broadcast_arrays(ramp[None, :], np.full((4000, 1), 128.0), ramp[::-1][None, :]), -1)
    Image.fromarray(big.astype(np.uint8)).save(tmp_path / "huge" / "a.jpg", quality=90)
    spec = {**RAW, "resize_size": 16, "crop_size": 16}
    ds = make_dataset(f"folder:{tmp_path}", "train", batch_size=3, train=False, preprocessing=spec, image_size=16,
                      num_threads=1, process_index=0, process_count=1)
    batch = next(iter(ds.batches(0)))
    assert batch["image"].shape == (3, 16, 16, 3)
    for image, label in zip(batch["image"], batch["label"]):
        path = tmp_path / ds.class_names[label] / ("a.png" if ds.class_names[label] == "one_png" else "a.jpg")
        with Image.open(path) as im:
            pil = preprocess.prepare(im, spec)
        if ds.class_names[label] == "huge":  # the central 4000x4000 of the ramp, shrunk 250x
            assert np.abs(image - pil).max() <= 2.0, np.abs(image - pil).max()
            assert image[..., 0].min() > 255 * 1000 / 6000 - 3 and image[..., 0].max() < 255 * 5000 / 6000 + 3
        else:  # one pixel repeated: every output pixel is its colour
            np.testing.assert_array_equal(image, np.broadcast_to(pil[0, 0], image.shape))
            np.testing.assert_array_equal(pil, np.broadcast_to(_pil_rgb(path)[0, 0], pil.shape))


def test_an_undecodable_file_is_named(tmp_path):
    """A TIFF saved as ``.png``: TensorFlow cannot decode it; loading the split names the file."""
    from PIL import Image

    (tmp_path / "c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "good.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "tiff.png", format="TIFF")
    reason = r"\(Unknown image file format\. One of JPEG, .* required\.\)\. Remove"  # without TF's op decoration
    with pytest.raises(UnreadableImagesError, match=rf"1 unreadable image\(s\) in .*: \S*/tiff\.png {reason}"):
        make_dataset(f"folder:{tmp_path}", "train", batch_size=2, train=False, preprocessing=RAW, image_size=S,
                     num_threads=1, process_index=0, process_count=1)
