"""Image folders and image files as a hostile user hands them over."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnzoo.data import DataWarning, iter_image_files, load_dataset, make_loader, read_image
from cnnzoo.data import folder as folder_module
from cnnzoo.errors import DataError


def _images(directory: Path, count: int, size: int = 12, seed: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"{i}.png")


def test_empty_and_unreadable_class_folders_are_named_in_a_warning(tmp_path: Path) -> None:
    _images(tmp_path / "ant", 10)
    _images(tmp_path / "bee", 10, seed=1)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "1.png").write_bytes(b"not a png at all")
    with pytest.warns(DataWarning, match=r"class folder\(s\) cat, dog hold no readable image"):
        bundle = load_dataset(f"imagefolder:{tmp_path}")
    assert bundle.class_names == ["ant", "bee"]


def test_a_folder_too_small_for_its_split_fails_before_training(tmp_path: Path) -> None:
    _images(tmp_path / "ant", 2)
    _images(tmp_path / "bee", 2, seed=1)
    with pytest.raises(DataError, match=r"4 images are too few for the split .*test split"):
        load_dataset(f"imagefolder:{tmp_path}")
    # Asking for no test part explicitly is fine.
    bundle = load_dataset(f"imagefolder:{tmp_path}", split=(4, 0, 0))
    assert len(bundle.train) == 4


def test_non_utf8_class_names_are_shown_escaped_everywhere(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(raw)
    _images(Path(os.fsdecode(raw)), 10)
    _images(tmp_path / "tea", 10, seed=1)
    bundle = load_dataset(f"imagefolder:{tmp_path}")
    assert bundle.class_names == ["caf\\xe9", "tea"]
    json.dumps(bundle.class_names).encode("utf-8")  # config.json can hold them
    labels = {label for _, label in iter_image_files(tmp_path)}
    assert labels == set(bundle.class_names)  # predict matches folders to classes by these

    from cnnzoo.analysis.plots import plot_confusion_matrix

    confusion = np.array([[3, 1], [0, 4]])
    out = plot_confusion_matrix(confusion, bundle.class_names, tmp_path / "cm.png")
    assert out.stat().st_size > 0


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.png"
    Image.new("RGB", (40, 30)).save(path)
    decoded = []
    monkeypatch.setattr(folder_module, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(DataError, match=r"40x30 pixels is more than the 0-megapixel limit"):
        read_image(path)
    assert not decoded


def test_a_fifo_is_not_a_regular_file_and_never_blocks(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(result, read_image, fifo), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(result[0], DataError) and "not a regular file" in str(result[0])

    from cnnzoo.analysis.predict import collect_images

    with pytest.raises(DataError, match="not a regular file"):
        collect_images([fifo])


def _catch(into: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 (the test inspects it)
        into.append(exc)


def _folder_with_a_truncated_jpeg(root: Path) -> None:
    _images(root / "a", 6)
    _images(root / "b", 6, seed=1)
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "a" / "whole.jpg")
    data = (root / "a" / "whole.jpg").read_bytes()
    (root / "a" / "whole.jpg").unlink()
    (root / "a" / "cut.jpg").write_bytes(data[: len(data) // 3])  # the header passes the check


def test_truncated_jpeg_warning_comes_even_when_the_loop_stops_on_its_last_step(
    tmp_path: Path,
) -> None:
    _folder_with_a_truncated_jpeg(tmp_path)
    bundle = load_dataset(f"imagefolder:{tmp_path}", split=(13, 0, 0), image_size=16)
    loader = make_loader(bundle, "train", batch_size=4, num_workers=0)
    with pytest.warns(DataWarning, match="1 image"):
        # The trainer's loop: take exactly len(loader) batches, then leave.
        taken = list(itertools.islice(loader, len(loader)))
    assert len(taken) == len(loader)


def test_every_rank_takes_the_same_number_of_steps_when_a_batch_is_unreadable(
    tmp_path: Path,
) -> None:
    _folder_with_a_truncated_jpeg(tmp_path)
    bundle = load_dataset(f"imagefolder:{tmp_path}", split=(13, 0, 0), image_size=16)
    cut = next(i for i, p in enumerate(bundle.train.paths) if p.name == "cut.jpg")
    steps, saw_cut = [], []
    for rank in (0, 1):
        # Batches of one: the rank that draws the truncated file gets a batch with no image.
        loader = make_loader(bundle, "train", batch_size=1, num_workers=0, rank=rank,
                             world_size=2, train=True)  # fmt: skip
        saw_cut.append(cut in loader.epoch_indices().tolist())
        with pytest.warns(DataWarning) if saw_cut[-1] else contextlib.nullcontext():
            batches = [y for _, y in loader]
        assert all(len(y) == 1 for y in batches)
        steps.append(len(batches))
    assert sum(saw_cut) == 1
    assert steps == [7, 7]  # 13 files padded to 14 and dealt to two ranks
