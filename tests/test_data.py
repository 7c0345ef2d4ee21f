"""Datasets for the trainer: ImageFolder directories, the ELPV split (from the real package's labels), batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsa.data import (
    ELPV_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MemoryDataset,
    dataset_classes,
    elpv_labels,
    elpv_split,
    flip_generator,
    load_data,
    prepare_batch,
    resize_uint8,
    stratified_split,
)
from dsa.errors import DataError


def write_folder(root: Path, classes: int = 3, per_split: dict | None = None, size: int = 20, seed: int = 0) -> Path:
    """A tiny ImageFolder tree of RGB PNGs whose colour depends on the class."""
    per_split = per_split or {"train": 4, "val": 2}
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 60, (size, size + 4, 3)).astype(np.uint8)
                a[..., c % 3] += 150
                Image.fromarray(a).save(d / f"img{i}.png")
    return root


# ------------------------------------------------------------------------------------------ ImageFolder


def test_image_folder_splits_classes_and_items(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", classes=3, per_split={"train": 4, "val": 2, "test": 1})
    b = load_data(root, 16)
    assert b.classes == ("class0", "class1", "class2") == dataset_classes(root)
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 12, "val": 6, "test": 3}
    x, y = b.split("train")[5]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)
    assert y == 1
    assert b.describe()["val"]["per_class"] == [2, 2, 2]
    assert b.flips == ("h",)


def test_image_folder_without_test_split(tmp_path: Path) -> None:
    b = load_data(write_folder(tmp_path / "d"), 16)
    assert "test" not in b.splits
    with pytest.raises(DataError, match="no 'test' split"):
        b.split("test")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p / "missing", "not a known dataset name"),
        (lambda p: (p / "only_train" / "train" / "a").mkdir(parents=True) or p / "only_train", "val is missing"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
    ],
)
def test_bad_data_specs(tmp_path: Path, make, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        load_data(make(tmp_path), 16)


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataError, match="imagenet: not a known dataset name"):
        load_data("imagenet", 16)


def test_val_class_missing_from_train(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d")
    (root / "val" / "extra").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "extra" / "x.png")
    with pytest.raises(DataError, match="'extra'"):
        load_data(root, 16)


def test_empty_class_folders(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_data(tmp_path, 16)


# ------------------------------------------------------------------------------------------ ELPV split


def test_elpv_labels_match_the_documented_counts() -> None:
    names, classes, types = elpv_labels()
    assert len(names) == len(classes) == len(types) == 2624
    assert np.bincount(classes).tolist() == [1508, 295, 106, 715]
    assert set(types) == {"mono", "poly"}
    assert len(ELPV_CLASSES) == 4


def test_elpv_split_is_deterministic_disjoint_and_complete() -> None:
    a, b = elpv_split(), elpv_split()
    for k in ("train", "val", "test"):
        assert np.array_equal(a[k], b[k])
    all_idx = np.concatenate([a["train"], a["val"], a["test"]])
    assert len(all_idx) == len(set(all_idx.tolist())) == 2624  # disjoint and complete
    assert {k: len(v) for k, v in a.items()} == {"train": 1836, "val": 394, "test": 394}
    other = elpv_split(seed=1)
    assert not np.array_equal(a["val"], other["val"])


def test_elpv_split_is_stratified_by_class_and_type() -> None:
    _, classes, types = elpv_labels()
    split = elpv_split()
    for c in range(4):
        for t in ("mono", "poly"):
            n = int(((classes == c) & (types == t)).sum())
            got = {k: int(((classes[v] == c) & (types[v] == t)).sum()) for k, v in split.items()}
            assert abs(got["val"] - 0.15 * n) <= 0.5 and abs(got["test"] - 0.15 * n) <= 0.5, (c, t, got)
            assert sum(got.values()) == n
    for c in range(4):  # every class in every split, in proportion
        n = int((classes == c).sum())
        assert abs(int((classes[split["test"]] == c).sum()) - 0.15 * n) <= 1


def test_stratified_split_orders_by_name_hash_only() -> None:
    names = [f"f{i}" for i in range(40)]
    strata = [i % 2 for i in range(40)]
    s1 = stratified_split(names, strata, seed=3)
    s2 = stratified_split(list(reversed(names)), list(reversed(strata)), seed=3)
    # the same files land in the same splits whatever the input order
    for k in s1:
        assert sorted(names[i] for i in s1[k]) == sorted(list(reversed(names))[i] for i in s2[k])
    assert [len(s1[k]) for k in ("train", "val", "test")] == [28, 6, 6]
    with pytest.raises(DataError, match="fractions"):
        stratified_split(names, strata, fractions=(0.5, 0.6, 0.1))


@pytest.mark.slow
def test_elpv_bundle_decodes_grayscale_at_the_image_size() -> None:
    b = load_data("elpv", 32)
    assert b.classes == ELPV_CLASSES and b.flips == ("h", "v")
    x, y = b.split("test")[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.uint8 and 0 <= y < 4
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 1836, "val": 394, "test": 394}
    batch = prepare_batch(torch.stack([b.split("val")[i][0] for i in range(4)]), "cpu")
    assert batch.shape == (4, 3, 32, 32)


# ------------------------------------------------------------------------------------------ batches


def test_prepare_batch_grayscale_normalises_to_three_channels() -> None:
    x = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    y = prepare_batch(x, "cpu")
    assert y.shape == (2, 3, 4, 4)
    for c in range(3):
        assert torch.allclose(y[:, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
    assert prepare_batch(x, "cpu", channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_flips_are_a_function_of_seed_epoch_step_rank() -> None:
    x = torch.arange(8 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(8, 3, 4, 4)
    a = prepare_batch(x, "cpu", flips=("h", "v"), generator=flip_generator(0, 1, 2, 0))
    b = prepare_batch(x, "cpu", flips=("h", "v"), generator=flip_generator(0, 1, 2, 0))
    c = prepare_batch(x, "cpu", flips=("h", "v"), generator=flip_generator(0, 1, 3, 0))
    plain = prepare_batch(x, "cpu")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, plain)
    for i in range(8):  # every image is itself, flipped h, v or both
        variants = [plain[i], plain[i].flip(-1), plain[i].flip(-2), plain[i].flip(-1).flip(-2)]
        assert any(torch.equal(a[i], v) for v in variants)


def test_resize_uint8_and_memory_dataset() -> None:
    imgs = torch.randint(0, 256, (5, 30, 30), dtype=torch.uint8)
    r = resize_uint8(imgs, 12, chunk=2)
    assert r.shape == (5, 1, 12, 12) and r.dtype == torch.uint8
    flat = torch.full((1, 30, 30), 77, dtype=torch.uint8)
    assert torch.all(resize_uint8(flat, 10) == 77)
    ds = MemoryDataset(r, torch.tensor([0, 1, 2, 3, 0]))
    assert len(ds) == 5 and ds[3][1] == 3
    with pytest.raises(DataError):
        MemoryDataset(r.float(), torch.zeros(5))
