"""cnnzoo.data: dataset look-up and readers, splits, image folders, and the batch loaders."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnzoo.data.datasets as datasets_module
from cnnzoo.data import (
    DataBundle,
    DataWarning,
    TensorSplit,
    iter_image_files,
    load_dataset,
    make_loader,
    read_idx,
    read_image,
    stratified_split,
)
from cnnzoo.data.augment import random_crop, random_erasing, random_flip
from cnnzoo.errors import DataError, UsageError

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> DataBundle:
    """Fashion-MNIST without a validation split; CI has the Debian package, so never skip there."""
    try:
        return load_dataset("fashion_mnist", val_split=0)
    except DataError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def index_bundle(n: int = 300, classes: int = 3, size: int = 16) -> DataBundle:
    """A synthetic set whose pixels encode each sample's index: row 0 holds (i % 256, i // 256),
    and the centre holds the label, so batches can be traced back to their samples."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    idx = torch.arange(n)
    labels = idx % classes
    images[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
    images[:, 0, 4:-4, 4:-4] = (labels * 50 + 50).to(torch.uint8)[:, None, None]
    split = TensorSplit(images, labels)
    return DataBundle(
        name="synthetic",
        class_names=[str(c) for c in range(classes)],
        channels=1,
        image_size=(size, size),
        mean=(0.0,),
        std=(1 / 255,),  # makes the loader's output equal the raw 0..255 pixel values
        train=split,
        val=None,
        test=split,
    )


def decode_indices(x: torch.Tensor) -> list[int]:
    pixels = x.round().to(torch.int64)
    return (pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 0, 1]).tolist()


# --- named datasets ---------------------------------------------------------------------------


def test_fashion_mnist_sizes_and_labels(fashion: DataBundle) -> None:
    assert (len(fashion.train), len(fashion.test), fashion.val) == (60_000, 10_000, None)
    assert fashion.train.images.shape == (60_000, 1, 28, 28)
    assert fashion.train.images.dtype == torch.uint8 and fashion.train.labels.dtype == torch.int64
    assert torch.bincount(fashion.train.labels).tolist() == [6000] * 10
    assert torch.bincount(fashion.test.labels).tolist() == [1000] * 10
    assert fashion.num_classes == 10 and fashion.class_names[0] == "T-shirt/top"
    assert fashion.in_memory and fashion.augment == "crop"
    # Train statistics of Fashion-MNIST (widely quoted as 0.2860 / 0.3530).
    assert fashion.mean[0] == pytest.approx(0.2860, abs=1e-3)
    assert fashion.std[0] == pytest.approx(0.3530, abs=1e-3)


def test_val_split_is_stratified_and_seeded(fashion: DataBundle) -> None:
    labels = fashion.train.labels.numpy()
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert len(held) == 6000 and len(keep) == 54_000
    assert np.bincount(labels[held]).tolist() == [600] * 10
    assert np.intersect1d(keep, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(60_000))
    again = stratified_split(labels, 0.1, seed=0)[1]
    other = stratified_split(labels, 0.1, seed=1)[1]
    assert np.array_equal(held, again)
    assert not np.array_equal(held, other)


def test_load_dataset_val_split_bundle(fashion: DataBundle) -> None:
    bundle = load_dataset("fashion-mnist", val_split=0.25, seed=3)  # alias accepted
    assert (len(bundle.train), len(bundle.val)) == (45_000, 15_000)
    assert torch.bincount(bundle.val.labels).tolist() == [1500] * 10
    _, held = stratified_split(fashion.train.labels.numpy(), 0.25, seed=3)
    assert torch.equal(bundle.val.images, fashion.train.images[torch.from_numpy(held)])


def test_fashion_loader_epoch_shapes_and_normalisation(fashion: DataBundle) -> None:
    loader = make_loader(fashion, "test", batch_size=128)
    assert len(loader) == math.ceil(10_000 / 128) and loader.num_samples == 10_000
    batches = list(loader)
    x, y = batches[0]
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert batches[-1][0].shape[0] == 10_000 - 78 * 128
    # Unshuffled test order equals the file order.
    assert torch.equal(torch.cat([b[1] for b in batches]), fashion.test.labels)
    total = squares = 0.0
    for x, _ in make_loader(fashion, "train", batch_size=8192):
        total += x.double().sum().item()
        squares += x.double().square().sum().item()
    count = 60_000 * 28 * 28
    assert total / count == pytest.approx(0.0, abs=1e-4)
    assert math.sqrt(squares / count - (total / count) ** 2) == pytest.approx(1.0, abs=1e-4)


def test_fashion_crop_augmentation_changes_images(fashion: DataBundle) -> None:
    plain = make_loader(fashion, "train", batch_size=256, train=True, augment="none")
    crop = make_loader(fashion, "train", batch_size=256, train=True, augment="crop")
    (xp, yp), (xc, yc) = next(iter(plain)), next(iter(crop))
    assert torch.equal(yp, yc)  # same seed and epoch: same order
    changed = (xp != xc).flatten(1).any(dim=1).float().mean().item()
    assert changed > 0.8  # 80 of 81 offsets move the image


def test_digits() -> None:
    pytest.importorskip("sklearn")
    bundle = load_dataset("digits", val_split=0.1)
    total = len(bundle.train) + len(bundle.val) + len(bundle.test)
    assert total == 1797 and bundle.num_classes == 10
    assert len(bundle.test) == round(0.2 * 1797)
    assert bundle.train.images.shape[1:] == (1, 8, 8) and bundle.channels == 1
    assert int(bundle.train.images.max()) == 255  # 16 scaled to 255
    assert torch.bincount(bundle.test.labels, minlength=10).min() >= 35
    # The test split is fixed; only the validation split follows the seed.
    other = load_dataset("digits", val_split=0.1, seed=5)
    assert torch.equal(other.test.images, bundle.test.images)
    assert not torch.equal(other.val.labels, bundle.val.labels) or not torch.equal(
        other.val.images, bundle.val.images
    )


def test_unknown_dataset_name_suggests_closest() -> None:
    with pytest.raises(UsageError, match="did you mean 'fashion_mnist'"):
        load_dataset("fashon_mnist")
    with pytest.raises(UsageError, match="cifar10"):
        load_dataset("cifar1O")


@pytest.fixture()
def no_data_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every look-up location at empty temporary folders."""
    monkeypatch.delenv("CNNZOO_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets_module, "SYSTEM_DATA_DIR", tmp_path / "system")
    return tmp_path


def test_missing_dataset_says_how_to_get_it(no_data_anywhere: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", data_dir=no_data_anywhere / "mine")
    message = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "--download" in message and "train-images-idx3-ubyte.gz" in message
    assert str(no_data_anywhere / "mine") in message
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load_dataset("cifar10")


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_mnist_like(directory: Path, n_train: int = 40, n_test: int = 20) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=gz)


def test_torchvision_layout_env_var_and_raw_idx(
    no_data_anywhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist_like(no_data_anywhere / "store" / "MNIST" / "raw")
    monkeypatch.setenv("CNNZOO_DATA", str(no_data_anywhere / "store"))
    bundle = load_dataset("mnist", val_split=0.5)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (20, 20, 20)
    assert bundle.class_names == [str(d) for d in range(10)]
    assert bundle.source == str(no_data_anywhere / "store" / "MNIST" / "raw")


def test_corrupt_idx_files_name_the_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path)
    good = tmp_path / "train-images-idx3-ubyte.gz"
    assert read_idx(good).shape == (40, 28, 28)

    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated.gz"):
        read_idx(truncated)

    short = tmp_path / "short-idx"
    short.write_bytes(gzip.decompress(good.read_bytes())[:-28])
    with pytest.raises(
        DataError, match=r"short-idx: corrupt IDX.*31360 bytes of data, found 31332"
    ):
        read_idx(short)

    bad_magic = tmp_path / "magic-idx"
    bad_magic.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="magic-idx: not an IDX file"):
        read_idx(bad_magic)

    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bjunk")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", data_dir=tmp_path)


class _Exploit:
    def __reduce__(self):  # what a planted pickle does: call a global on load
        return (os.system, ("echo pwned",))


def test_cifar_batches_load_and_refuse_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 6) for i in range(1, 6)] + [("test_batch", 4)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [1] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    bundle = load_dataset("cifar10", data_dir=tmp_path, val_split=0)
    assert bundle.train.images.shape == (30, 3, 32, 32) and bundle.channels == 3
    assert bundle.class_names == ["a", "b"] and bundle.augment == "crop_flip"

    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Exploit(), "labels": []}))
    with pytest.raises(DataError, match="refusing to load posix.system|refusing to load os"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- the in-memory loader ---------------------------------------------------------------------


def test_epoch_covers_every_sample_once_and_set_epoch_repeats() -> None:
    bundle = index_bundle(300)
    loader = make_loader(bundle, "train", batch_size=64, train=True, augment="none", seed=7)
    first = [i for x, _ in loader for i in decode_indices(x)]
    assert sorted(first) == list(range(300)) and first != list(range(300))
    assert [len(y) for _, y in loader] == [64, 64, 64, 64, 44]
    assert [i for x, _ in loader for i in decode_indices(x)] == first  # same epoch, same order
    loader.set_epoch(1)
    second = [i for x, _ in loader for i in decode_indices(x)]
    assert sorted(second) == list(range(300)) and second != first
    twin = make_loader(bundle, "train", batch_size=64, train=True, augment="crop_flip", seed=7)
    other = make_loader(bundle, "train", batch_size=64, train=True, augment="crop_flip", seed=7)
    twin.set_epoch(5)
    other.set_epoch(5)
    for (xa, ya), (xb, yb) in zip(twin, other, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augmentation_keeps_labels_aligned() -> None:
    bundle = index_bundle(300)
    loader = make_loader(bundle, "train", batch_size=100, train=True, augment="crop_flip")
    moved = 0
    for x, y in loader:
        # Padding 4 on a 16-px image keeps the centre pixel inside the label square.
        assert torch.equal(x[:, 0, 7, 7].round().long(), y * 50 + 50)
        moved += int((x[:, 0, 0, :2].round() == 0).all(dim=1).sum())
    assert moved > 150  # most crops shift the index pixels out of the corner

    identity = make_loader(
        bundle, "train", batch_size=100, train=True, augment="crop", crop_padding=0
    )
    for x, y in identity:
        idx = torch.tensor(decode_indices(x))
        assert torch.equal(x.to(torch.uint8), bundle.train.images[idx])
        assert torch.equal(y, bundle.train.labels[idx])


def test_random_crop_matches_per_sample_slicing() -> None:
    x = torch.randint(0, 256, (32, 3, 10, 12), dtype=torch.uint8)
    out = random_crop(x, 3, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    top, left = torch.randint(0, 7, (32,), generator=gen), torch.randint(0, 7, (32,), generator=gen)
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    expected = torch.stack(
        [padded[i, :, top[i] : top[i] + 10, left[i] : left[i] + 12] for i in range(32)]
    )
    assert torch.equal(out, expected)


def test_flips_flip() -> None:
    x = torch.arange(64 * 5, dtype=torch.float32).view(64, 1, 1, 5).expand(64, 1, 3, 5)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(dim=1)
    same = (out == x).flatten(1).all(dim=1)
    assert bool((flipped ^ same).all())
    assert 16 < int(flipped.sum()) < 48


def test_random_erasing_replaces_one_box_per_chosen_image() -> None:
    x = torch.full((400, 3, 20, 24), 1000.0)  # noise never reaches 1000: erased pixels show
    out = random_erasing(x, torch.Generator().manual_seed(0), p=0.5)
    erased = out != 1000.0
    assert torch.equal(erased[:, 0], erased[:, 1]) and torch.equal(erased[:, 0], erased[:, 2])
    hit = erased[:, 0].flatten(1).any(dim=1)
    assert 150 < int(hit.sum()) < 250  # p = 0.5 of 400
    for mask in erased[hit, 0]:
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(mask.sum()) == height * width  # one solid rectangle
        assert 0.5 * 0.02 <= height * width / (20 * 24) <= 1.5 / 3  # the area range, rounded
    values = out[hit][erased[hit]]
    assert abs(values.mean().item()) < 0.05 and abs(values.std().item() - 1) < 0.05
    again = random_erasing(x, torch.Generator().manual_seed(0), p=0.5)
    assert torch.equal(out, again)
    assert torch.equal(random_erasing(x, torch.Generator().manual_seed(0), p=0.0), x)


def test_random_erasing_only_on_training_batches() -> None:
    bundle = index_bundle(200)
    options = dict(batch_size=100, augment="none", random_erasing=1.0)
    erased = torch.cat([x for x, _ in make_loader(bundle, "train", train=True, **options)])
    plain = torch.cat([x for x, _ in make_loader(bundle, "test", **options)])
    assert torch.equal(plain.to(torch.uint8), bundle.test.images)
    assert bool((erased != erased.round()).flatten(1).any(dim=1).all())  # noise in every image
    with pytest.raises(UsageError, match="random-erasing must be in"):
        make_loader(bundle, "train", train=True, batch_size=10, random_erasing=1.5)


def test_ddp_shards_are_disjoint_and_cover_everything() -> None:
    bundle = index_bundle(300)
    seen = []
    for rank in (0, 1):
        loader = make_loader(
            bundle, "train", batch_size=32, train=True, augment="none", rank=rank, world_size=2
        )
        loader.set_epoch(2)
        seen.append([i for x, _ in loader for i in decode_indices(x)])
        assert loader.num_samples == 150 and len(loader) == 5
    assert set(seen[0]).isdisjoint(seen[1]) and sorted(seen[0] + seen[1]) == list(range(300))

    odd = index_bundle(301)
    shards = [
        make_loader(odd, "test", batch_size=50, rank=r, world_size=2).epoch_indices().tolist()
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 151  # padded by wrapping
    assert sorted(set(shards[0] + shards[1])) == list(range(301))


def test_resize_and_channel_conversion() -> None:
    bundle = index_bundle(10)
    x, _ = next(iter(make_loader(bundle, "test", batch_size=10, image_size=32, channels=3)))
    assert x.shape == (10, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    # Upsampling by 2 (no antialias): the centre of a constant square keeps its value.
    assert torch.equal(x[:, 0, 15, 15], (bundle.test.labels * 50 + 50).float())
    x, _ = next(iter(make_loader(bundle, "test", batch_size=10, channels_last=True, channels=3)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_rrc_on_tensors() -> None:
    bundle = index_bundle(64)
    loader = make_loader(bundle, "train", batch_size=64, train=True, augment="rrc", image_size=24)
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 24, 24) and torch.isfinite(x).all()
    assert x.min() >= 0 and x.max() <= 200  # bilinear mixes of the 0..200 pixels


# --- image folders ----------------------------------------------------------------------------


def save_mixed_images(directory: Path) -> None:
    """One file per awkward mode, and a few that are not images at all."""
    directory.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (200, 10, 10)).save(directory / "rgb.jpg")
    Image.new("L", (20, 16), 90).save(directory / "grey.png")
    Image.new("RGBA", (20, 16), (0, 0, 0, 0)).save(directory / "clear.png")
    Image.new("CMYK", (20, 16), (0, 0, 0, 0)).save(directory / "cmyk.jpg")
    palette = Image.new("P", (20, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(directory / "palette.png")
    Image.fromarray(np.full((16, 20), 257 * 100, dtype=np.uint16)).save(directory / "deep.png")


def test_read_image_converts_modes(tmp_path: Path) -> None:
    save_mixed_images(tmp_path)
    centre = {p.stem: read_image(p, 3)[:, 8, 10].tolist() for p in tmp_path.iterdir()}
    assert centre["grey"] == [90, 90, 90]
    assert centre["clear"] == [255, 255, 255]  # transparent -> white
    assert centre["cmyk"] == [255, 255, 255]  # no ink -> white
    assert centre["palette"] == [10, 200, 30]
    assert centre["deep"] == [100, 100, 100]  # 16-bit 25700 -> 8-bit 100
    assert abs(centre["rgb"][0] - 200) <= 3  # JPEG is lossy
    assert read_image(tmp_path / "rgb.jpg", 1).shape == (1, 16, 20)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="junk.png"):
        read_image(tmp_path / "junk.png")


def make_folder(root: Path, per_class: dict[str, int], size: int = 8) -> None:
    for c, (name, count) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (size, size), (c * 100, i % 256, 50)).save(root / name / f"{i}.png")


def test_image_folder_with_odd_files_warns_once(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cat": 10, "dog": 10})
    save_mixed_images(tmp_path / "dog")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"hidden files are ignored silently")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = load_dataset(f"imagefolder:{tmp_path}", split=(20, 4, 2), image_size=16)
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1 and "skipped 3 file(s)" in str(data_warnings[0].message)
    assert bundle.class_names == ["cat", "dog"] and bundle.channels == 3
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (20, 4, 2)
    assert bundle.image_size == (16, 16) and not bundle.in_memory
    assert sorted(bundle.test.labels) == [0, 1]  # stratified even at two images

    loader = make_loader(bundle, "train", batch_size=8, train=True, num_workers=0)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(8, 3, 16, 16)] * 2 + [(4, 3, 16, 16)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(bundle.train.labels)
    shown = loader.images_for_display([0, 1])
    assert shown.shape == (2, 3, 16, 16) and shown.dtype == torch.uint8


def test_image_folder_decode_failure_in_worker_is_skipped(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 6, "b": 6}, size=32)
    good = tmp_path / "a" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "a" / "cut.jpg").write_bytes(data[: len(data) // 3])  # header fine, body cut
    bundle = load_dataset(f"imagefolder:{tmp_path}", split=(14, 0, 0), image_size=16)
    assert len(bundle.train) == 14 and bundle.val is None
    loader = make_loader(bundle, "train", batch_size=5, num_workers=1)
    with pytest.warns(DataWarning, match="1 image"):
        labels = [y for _, y in loader]
    assert sum(len(y) for y in labels) == 13 and loader.bad_samples == 1


def test_image_folder_count_split_400_92_10(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cats": 251, "dogs": 251}, size=4)
    bundle = load_dataset(f"imagefolder:{tmp_path}", split=(400, 92, 10))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (400, 92, 10)
    assert sorted(np.bincount(bundle.val.labels).tolist()) == [46, 46]
    parts = [set(s.paths) for s in (bundle.train, bundle.val, bundle.test)]
    assert len(parts[0] | parts[1] | parts[2]) == 502
    other = load_dataset(f"imagefolder:{tmp_path}", split=(400, 92, 10), seed=1)
    assert other.test.paths == bundle.test.paths  # the test part ignores the seed
    assert other.val.paths != bundle.val.paths
    with pytest.raises(UsageError, match="only 502"):
        load_dataset(f"imagefolder:{tmp_path}", split=(500, 92, 10))


def test_image_folder_predefined_splits_and_grey(tmp_path: Path) -> None:
    for part, n in (("train", 6), ("val", 2), ("test", 3)):
        for c in ("x", "y"):
            (tmp_path / part / c).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (12, 12), 40 * i).save(tmp_path / part / c / f"{i}.png")
    bundle = load_dataset(f"imagefolder:{tmp_path}", image_size=12)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 4, 6)
    assert bundle.channels == 1  # every image is grey
    found = iter_image_files(tmp_path / "test")
    assert len(found) == 6 and {c for _, c in found} == {"x", "y"}


def test_empty_and_one_class_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images found"):
        load_dataset(f"imagefolder:{tmp_path}")
    make_folder(tmp_path, {"only": 3})
    with pytest.raises(DataError, match="single class"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_folder_loaders_decode_in_process_once_openvino_is_loaded(
    tmp_path: Path, monkeypatch
) -> None:
    """OpenVINO's threads do not survive fork: forked DataLoader workers crashed the parent."""
    import sys
    import types

    import cnnzoo.data.loader as loader_module
    from cnnzoo.data.folder import DataWarning

    for index, name in enumerate(("red", "green")):
        (tmp_path / name).mkdir()
        for i in range(4):
            pixels = np.zeros((12, 12, 3), dtype=np.uint8)
            pixels[..., index] = 200 + i
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    bundle = load_dataset(f"imagefolder:{tmp_path}", image_size=12)
    assert loader_module.fork_safe_workers(3) == 3
    monkeypatch.setitem(sys.modules, "openvino", types.ModuleType("openvino"))
    monkeypatch.setattr(loader_module, "_warned_openvino_fork", [])
    loader = make_loader(bundle, "train", batch_size=8, train=False, num_workers=2)
    with pytest.warns(DataWarning, match="OpenVINO is loaded"):
        batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == len(bundle.train)
    assert loader_module.fork_safe_workers(3) == 0
