"""Input pipeline: sources, exact evaluation, determinism, resumption, sharding, failures.

Every image written by these tests carries its example id in its red and green channels (a
constant colour per image, so any crop or flip keeps it) and a horizontal gradient in blue
(which crops and flips change), so a test can tell which examples a batch holds and whether
two batches were augmented alike.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tl_jax import preprocess
from tl_jax.data import make_dataset, prefetch
from tl_jax.data import digits as digits_lib
from tl_jax.data import folder as folder_lib
from tl_jax.data.transform import make_transform, normalize

# Pixels pass through unchanged: batches show raw 0..255 values.
RAW = {"name": "raw", "channel_order": "RGB", "divisor": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
       "resize_size": 16, "crop_size": 16}
ONE = {"process_index": 0, "process_count": 1}
CLASSES = ("cat", "ant", "bee")     # written unsorted; class names must come out sorted


def id_image(i: int, h: int = 20, w: int = 24) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0], img[..., 1] = 8 * (i % 32), 8 * (i // 32)
    img[..., 2] = np.round(np.linspace(0, 255, w))[None, :]
    return img


def ids(batch: dict) -> np.ndarray:
    """The example ids of a batch (``-1`` where ``mask`` is 0)."""
    r = np.round(np.median(batch["image"][..., 0], axis=(1, 2)) / 8)
    g = np.round(np.median(batch["image"][..., 1], axis=(1, 2)) / 8)
    out = (r + 32 * g).astype(int)
    if "mask" in batch:
        out[batch["mask"] == 0] = -1
    return out


def write_folder(root: str, per_class: int, corrupt: str | None = None) -> dict[int, int]:
    """Images alternating JPEG / PNG; returns id -> label (labels follow the sorted class names)."""
    from PIL import Image

    labels, i = {}, 0
    for name in CLASSES:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(per_class):
            ext = "jpg" if k % 2 else "png"
            Image.fromarray(id_image(i)).save(os.path.join(root, name, f"img{k}.{ext}"), quality=95)
            labels[i] = sorted(CLASSES).index(name)
            i += 1
    if corrupt:
        good = open(os.path.join(root, CLASSES[0], "img1.jpg"), "rb").read()
        with open(os.path.join(root, CLASSES[0], corrupt), "wb") as f:
            f.write(good[:len(good) // 3])                      # truncated JPEG
    return labels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("folder"))
    return root, write_folder(root, per_class=11)              # 33 images


def folder_ds(root, split="train", **kw):
    args = dict(batch_size=8, train=False, preprocessing=RAW, image_size=16, num_threads=2, **ONE)
    args.update(kw)
    return make_dataset(f"folder:{root}", split, **args)


def take(ds, n, start=0):
    it = ds.batches(start)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


# ---------------------------------------------------------------- folder source


def test_folder_eval_sees_every_example_once_with_ragged_last_batch(folder):
    root, labels = folder
    ds = folder_ds(root)
    assert ds.class_names == ("ant", "bee", "cat") and ds.num_classes == 3 and ds.num_examples == 33
    batches = list(ds)
    assert len(batches) == ds.steps_per_epoch == 5                      # ceil(33 / 8)
    assert all(b["image"].shape == (8, 16, 16, 3) and b["label"].dtype == np.int32 for b in batches)
    np.testing.assert_array_equal(batches[-1]["mask"], [1] + [0] * 7)
    seen = np.concatenate([ids(b) for b in batches])
    assert sorted(seen[seen >= 0]) == list(range(33))
    got = {i: int(lab) for b in batches for i, lab, m in zip(ids(b), b["label"], b["mask"]) if m}
    assert got == labels


def test_folder_eval_two_processes_cover_the_split_once(folder):
    root, _ = folder
    per_process = [list(folder_ds(root, "train[:90%]", process_index=p, process_count=2)) for p in range(2)]
    assert len(per_process[0]) == len(per_process[1]) == 4            # ceil(30 / 8) batches of 4 each
    assert sum(float(b["mask"].sum()) for bs in per_process for b in bs) == 30
    seen = [set(i for b in bs for i in ids(b) if i >= 0) for bs in per_process]
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 30


def test_folder_split_slices_are_disjoint_and_cover(folder):
    root, _ = folder
    a = {i for b in folder_ds(root, "train[:70%]") for i in ids(b) if i >= 0}
    b = {i for b in folder_ds(root, "train[70%:]") for i in ids(b) if i >= 0}
    assert len(a) == 23 and len(b) == 10 and not a & b
    with pytest.raises(ValueError, match="no 'test' subfolder"):
        folder_lib.load(root, "test")


def test_eval_geometry_and_normalisation_match_torchvision(tmp_path):
    torch_t = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, (w, h, ext) in enumerate([(300, 260, "png"), (257, 341, "png"), (500, 375, "jpg")]):
        os.makedirs(tmp_path / "c", exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), np.uint8)).resize((w, h), Image.BICUBIC)
        img = np.clip(np.asarray(coarse, np.float32) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "c" / f"{k}.{ext}", quality=90)
    spec = preprocess.SPECS["torchvision"]
    ds = folder_ds(str(tmp_path), image_size=224, preprocessing="torchvision", batch_size=3)
    batch = next(iter(ds))
    ref_t = torch_t.Compose([torch_t.Resize(256), torch_t.CenterCrop(224), torch_t.ToTensor(),
                             torch_t.Normalize(spec.mean, spec.std)])
    for k in range(3):
        ref = ref_t(Image.open(ds.source.paths[k]).convert("RGB")).permute(1, 2, 0).numpy()
        levels = np.abs(batch["image"][k] - ref) * 255 * np.asarray(spec.std)    # in 0..255 gray levels
        assert levels.max() <= 1.01 and levels.mean() < 0.3                     # TF vs PIL resize rounding


@pytest.mark.parametrize("name", sorted(preprocess.SPECS))
def test_normalisation_is_the_preprocess_spec(name):
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
    np.testing.assert_allclose(normalize(x, make_transform(name, train=False)), preprocess.normalize(x, name),
                               rtol=1e-5, atol=1e-4)


def test_train_is_seeded_and_resumes_exactly_across_epochs(folder):
    root, _ = folder
    ds = folder_ds(root, train=True, seed=3)
    assert ds.steps_per_epoch == 4 and "mask" not in take(ds, 1)[0]
    run = take(ds, 10)                                                  # epochs 0, 1 and half of 2
    resumed = take(folder_ds(root, train=True, seed=3), 5, start=5)     # a fresh pipeline, as after a restart
    for a, b in zip(run[5:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    for epoch in range(2):                                              # no example twice within an epoch
        seen = np.concatenate([ids(b) for b in run[4 * epoch:4 * epoch + 4]])
        assert len(set(seen)) == 32
    other = take(folder_ds(root, train=True, seed=4), 1)[0]
    assert not np.array_equal(other["image"], run[0]["image"])
    assert not np.array_equal(run[0]["image"][..., 2], run[4]["image"][..., 2])   # new crops each epoch


def test_train_shards_concatenate_to_the_single_process_batch(folder):
    root, _ = folder
    single = take(folder_ds(root, train=True, seed=1), 4)
    shards = [take(folder_ds(root, train=True, seed=1, process_index=p, process_count=2), 4) for p in range(2)]
    seen = [set(), set()]
    for step in range(4):
        np.testing.assert_array_equal(np.concatenate([shards[0][step]["image"], shards[1][step]["image"]]),
                                      single[step]["image"])
        for p in range(2):
            assert shards[p][step]["image"].shape[0] == 4
            seen[p] |= set(ids(shards[p][step]))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 32


def test_corrupt_image_is_named_when_the_split_loads_or_skipped_with_a_warning(tmp_path, capfd):
    from tl_jax.data import UnreadableImagesError

    root = str(tmp_path)
    write_folder(root, per_class=2, corrupt="broken.jpg")
    with pytest.raises(UnreadableImagesError, match=r"1 unreadable image.*broken\.jpg.*skip_corrupt=True") as err:
        folder_ds(root, batch_size=4)       # before any batch is read, not when training reaches the file
    assert [os.path.basename(p) for p, _ in err.value.failures] == ["broken.jpg"]
    assert "Corrupt JPEG" not in capfd.readouterr().err   # libjpeg's own warnings are silenced
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable.*broken\.jpg"):
        ds = folder_ds(root, batch_size=4, skip_corrupt=True)
    assert ds.num_examples == 6
    assert sorted(i for b in ds for i in ids(b) if i >= 0) == list(range(6))


# ---------------------------------------------------------------- TFDS source


@pytest.fixture(scope="module")
def tfds():
    pytest.importorskip("tensorflow_datasets")
    from tl_jax.data import tf_ops

    return tf_ops.tfds_module()


@pytest.fixture(scope="module")
def toy_tfds(tfds, tmp_path_factory):
    """A real, prepared TFDS dataset (23 train examples) whose features are not called image / label."""

    class TlJaxToyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "picture": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "kind": tfds.features.ClassLabel(names=["a", "b", "c"]),
                "mask": tfds.features.Image(shape=(None, None, 1))}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(23)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"picture": id_image(i), "kind": i % 3, "mask": np.zeros((4, 4, 1), np.uint8)}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    tfds.builder("tl_jax_toy_images", data_dir=data_dir).download_and_prepare()
    return data_dir


def toy_ds(data_dir, **kw):
    args = dict(batch_size=4, train=True, preprocessing=RAW, image_size=16, data_dir=data_dir, num_threads=2,
                image_key="picture", **ONE)
    args.update(kw)
    return make_dataset("tfds:tl_jax_toy_images", "train", **args)


def test_tfds_prepared_dataset_eval_sharding_and_resumption(toy_tfds):
    with pytest.raises(ValueError, match=r"which feature is the image.*'picture', 'mask'.*image_key"):
        toy_ds(toy_tfds, image_key=None)
    with pytest.raises(ValueError, match=r"has no split 'test'; it has: train \(slices such as 'train\[90%:\]'"):
        make_dataset("tfds:tl_jax_toy_images", "test", batch_size=4, train=False, preprocessing=RAW, image_size=16,
                     data_dir=toy_tfds, image_key="picture", **ONE)
    ev = [list(toy_ds(toy_tfds, train=False, process_index=p, process_count=2)) for p in range(2)]
    assert len(ev[0]) == len(ev[1]) == 6                               # shards of 12 and 11, batches of 2
    seen = [[i for b in bs for i in ids(b) if i >= 0] for bs in ev]
    assert sorted(seen[0] + seen[1]) == list(range(23))
    assert sum(float(b["mask"].sum()) for bs in ev for b in bs) == 23

    ds = toy_ds(toy_tfds, seed=5)
    assert ds.class_names == ("a", "b", "c") and ds.steps_per_epoch == 5
    assert (ds.source.image_key, ds.source.label_key) == ("picture", "kind")
    # shuffle_buffer=5 < 23: the large-dataset path (seeded file shuffle + buffer, one pipeline per epoch)
    for buffer in (4096, 5):
        run = take(toy_ds(toy_tfds, seed=5, shuffle_buffer=buffer), 8)
        resumed = take(toy_ds(toy_tfds, seed=5, shuffle_buffer=buffer), 5, start=3)  # crosses the epoch boundary
        for a, b in zip(run[3:], resumed):
            np.testing.assert_array_equal(a["image"], b["image"])
        first_epoch = np.concatenate([ids(b) for b in run[:5]])
        assert len(set(first_epoch)) == 20
        assert all(int(lab) == i % 3 for b in run for i, lab in zip(ids(b), b["label"]))

    shards = [np.concatenate([ids(b) for b in take(toy_ds(toy_tfds, process_index=p, process_count=2), 5)])
              for p in range(2)]
    assert not set(shards[0]) & set(shards[1])


def test_tfds_epoch_order_ignores_tensorflows_global_seed(toy_tfds):
    """The full-shuffle path's order depends on (seed, epoch) only: ``tf.random.set_seed`` (which
    ``keras.utils.set_random_seed`` calls) neither changes it nor, at 0, breaks the pipeline (it did)."""
    import tensorflow as tf

    def epochs():  # two epochs of 5 batches, the second crossing into a new permutation
        return np.concatenate([ids(b) for b in take(toy_ds(toy_tfds, seed=5), 10)])

    unseeded = epochs()
    try:
        for global_seed in (0, 7):
            tf.random.set_seed(global_seed)
            np.testing.assert_array_equal(epochs(), unseeded, err_msg=f"tf.random.set_seed({global_seed})")
    finally:
        tf.random.set_seed(None)
    assert len(set(unseeded[:20])) == 20 and not np.array_equal(unseeded[:20], unseeded[20:])


@pytest.mark.parametrize("name,num_classes,first", [("tf_flowers", 5, "dandelion"),
                                                   ("oxford_iiit_pet", 37, "Abyssinian")])
def test_tfds_catalog_datasets_under_mock_data(tfds, name, num_classes, first):
    with tfds.testing.mock_data(num_examples=10):
        train = make_dataset(f"tfds:{name}", "train[:90%]", batch_size=4, train=True, image_size=32, **ONE)
        assert (train.num_classes, train.class_names[0]) == (num_classes, first)
        assert (train.source.image_key, train.source.label_key) == ("image", "label")
        batch = take(train, 1)[0]
        assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
        assert ((0 <= batch["label"]) & (batch["label"] < num_classes)).all()
        ev = list(make_dataset(f"tfds:{name}", "test", batch_size=4, train=False, image_size=32, **ONE))
        assert [float(b["mask"].sum()) for b in ev] == [4, 4, 2]


def test_tfds_not_prepared_fails_fast_with_instructions(tfds, tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        make_dataset("tfds:tf_flowers", "train", batch_size=4, train=True, data_dir=str(tmp_path), **ONE)
    assert time.perf_counter() - start < 10
    assert "not prepared" in str(err.value) and f"tfds build tf_flowers --data_dir {tmp_path}" in str(err.value)
    with pytest.raises(ValueError, match="Did you mean: .*tf_flowers"):
        make_dataset("tfds:tf_flower", "train", batch_size=4, train=True, data_dir=str(tmp_path), **ONE)


# ---------------------------------------------------------------- digits, synthetic, no TensorFlow


def test_digits_class_filter_and_few_labels_match_scikit_learn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    images, labels = digits_lib.digits_arrays()   # read without importing scikit-learn
    assert images.dtype == ref.images.dtype and np.array_equal(images, ref.images)
    assert labels.dtype == np.int64 and np.array_equal(labels, ref.target)
    by_pixels = {digits_lib.upsample(img[None], 32)[0].tobytes(): int(t) for img, t in zip(ref.images, ref.target)}
    classes = (5, 6, 7, 8, 9)
    src = digits_lib.load("train", classes=classes)
    assert src.class_names == ("5", "6", "7", "8", "9")
    for img, label in zip(src.images, src.labels):
        assert by_pixels[img.tobytes()] == classes[label]
    test = digits_lib.load("test", classes=classes)
    assert src.num_examples + test.num_examples == int(np.isin(ref.target, classes).sum())

    few = digits_lib.load("train", classes=classes, labels_per_class=3, label_seed=1)
    assert np.bincount(few.labels, minlength=5).tolist() == [3] * 5
    pool = {img.tobytes() for img in src.images}
    assert all(img.tobytes() in pool for img in few.images)
    again = digits_lib.load("train", classes=classes, labels_per_class=3, label_seed=1)
    other = digits_lib.load("train", classes=classes, labels_per_class=3, label_seed=2)
    assert np.array_equal(few.images, again.images) and not np.array_equal(few.images, other.images)


def test_digits_pipeline_eval_exact_and_train_resumes():
    ev = make_dataset("digits", "test", batch_size=64, train=False, image_size=32, **ONE)
    batches = list(ev)
    assert len(batches) == 6 and sum(float(b["mask"].sum()) for b in batches) == ev.num_examples == 359
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(labels, ev.source.labels)
    mk = lambda: make_dataset("digits", "train", batch_size=64, train=True, image_size=32, seed=2, **ONE)  # noqa: E731
    run, resumed = take(mk(), 25), take(mk(), 5, start=20)             # 22 steps per epoch
    for a, b in zip(run[20:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert mk().ctx.transform.flip is False                            # digits are not mirror-symmetric


def test_without_tensorflow_installed():
    code = ("import sys\n"
            "sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
            "import tl_jax, tl_jax.data as d\n"
            "kw = dict(process_index=0, process_count=1)\n"
            "b = next(iter(d.make_dataset('digits', 'train', batch_size=8, train=True, image_size=32, **kw)))\n"
            "s = d.make_dataset('synthetic', 'train', batch_size=4, train=False, image_size=64, num_examples=6, **kw)\n"
            "assert [float(x['mask'].sum()) for x in s] == [4, 2] and b['image'].shape == (8, 32, 32, 3)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_prefetch_transfers_and_reraises():
    def gen():
        yield 1
        yield 2
        raise KeyError("producer failed")

    it = prefetch(gen(), size=1, transfer=lambda x: 10 * x)
    assert [next(it), next(it)] == [10, 20]
    with pytest.raises(KeyError, match="producer failed"):
        next(it)
    endless = prefetch(iter(int, 1), size=2)                            # never ends: close must stop it
    next(endless)
    endless.close()
    assert not endless._thread.is_alive()


def test_batch_larger_than_the_split_is_refused():
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        make_dataset("synthetic", "train", batch_size=64, train=True, image_size=8, num_examples=10, **ONE)
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        make_dataset("synthetic", "train", batch_size=5, train=True, image_size=8, process_index=0, process_count=2)


def test_images_already_at_size_skip_the_per_image_transform_exactly():
    """Digits at 8x8 with whole-image crops and no flip: the stored images, as the per-image path gives them."""
    from tl_jax.data.transform import eval_array, train_array

    for train in (True, False):
        ds = make_dataset("digits", "train", batch_size=8, train=train, image_size=8, resize_size=8,
                          scale=(1.0, 1.0), **ONE)
        src, t = ds.source, ds.ctx.transform
        assert src._as_stored(t)
        idx = np.arange(40)
        per_image = np.stack([train_array(src.images[i], np.random.default_rng(i), t) if train
                              else eval_array(src.images[i], t) for i in idx])
        np.testing.assert_array_equal(src.transform_batch(ds.ctx, 0, idx), normalize(per_image, t))
    # Any real augmentation takes the per-image path.
    cropped = make_dataset("digits", "train", batch_size=8, train=True, image_size=8, resize_size=8,
                           scale=(0.5, 1.0), **ONE)
    assert not cropped.source._as_stored(cropped.ctx.transform)
