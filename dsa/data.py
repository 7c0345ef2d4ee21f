"""Datasets for finetuning: ImageFolder directories and the ELPV solar-cell dataset.

Every dataset yields ``(uint8 image [C, S, S], int label)`` with C = 3 (RGB) or 1 (grayscale, replicated to three
channels by :func:`prepare_batch`). Conversion to float, augmentation (random flips drawn from a generator the
caller seeds, so that a run is reproducible and resumable without saving RNG state), normalisation and memory
layout happen per batch on the training device, in :func:`prepare_batch`.

ELPV (``--data elpv``): 2,624 300x300 grayscale electroluminescence images of solar cells from the PyPI package
``elpv-dataset`` (CC BY-NC-SA 4.0: read from the installed package at run time, never copied). The defect
probability 0, 1/3, 2/3, 1 is the class (4 classes). The split is deterministic and stratified by class and cell
type (mono/poly): within each of the 8 strata the images are ordered by ``sha256("<seed>:<file name>")`` and the
first 70% go to train, the next 15% to val, the rest to test (15% rounded per stratum). The order depends only on
file names, never on numpy's or torch's random streams, so the split is the same on every machine and version.
Images are decoded once per process, resized once (bilinear, antialiased) and kept in memory as uint8.

ImageFolder (``--data DIR``): ``DIR/train/<class>/*.png|jpg|...``, ``DIR/val/<class>/...`` and optionally
``DIR/test/<class>/...``; class indices follow the sorted class folder names of ``train/``. Images are decoded
with PIL per item, converted to RGB and resized to S x S (no crop).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dsa.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLITS = ("train", "val", "test")

ELPV_CLASSES = ("p=0", "p=1/3", "p=2/3", "p=1")
ELPV_SPLIT_SEED = 0
ELPV_FRACTIONS = (0.70, 0.15, 0.15)  # train, val, test


class MemoryDataset(Dataset):
    """Images already decoded and resized: uint8 ``[N, C, S, S]`` and int64 labels ``[N]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise DataError(f"MemoryDataset needs uint8 [N, C, H, W] images and N labels, got {tuple(images.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class FolderDataset(Dataset):
    """One split of an ImageFolder directory, decoded with PIL per item and resized to ``size`` x ``size``."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], size: int) -> None:
        self.files = list(files)
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
                x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        except OSError as e:
            raise DataError(f"cannot read image {self.files[i]}: {e}") from e
        return x, int(self.labels[i])


@dataclass(frozen=True)
class DataBundle:
    """The splits of one dataset at one image size, and how to prepare its batches."""

    name: str
    classes: tuple[str, ...]
    image_size: int
    splits: dict  # split name -> Dataset ("train", "val", optionally "test")
    flips: tuple[str, ...] = ("h",)  # training augmentation: "h" horizontal, "v" vertical flips
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Dataset:
        if name not in self.splits:
            have = ", ".join(self.splits)
            raise DataError(f"dataset {self.name} has no {name!r} split (it has {have})")
        return self.splits[name]

    def describe(self) -> dict:
        out: dict = {"name": self.name, "classes": list(self.classes), "image_size": self.image_size}
        for k, ds in self.splits.items():
            counts = torch.bincount(_labels(ds), minlength=self.num_classes).tolist()
            out[k] = {"images": len(ds), "per_class": counts}
        if self.note:
            out["note"] = self.note
        return out


def _labels(ds: Dataset) -> torch.Tensor:
    return ds.labels  # both dataset classes keep their labels as a tensor


# ------------------------------------------------------------------------------------------ ELPV


def _elpv_csv() -> Path:
    try:
        import elpv_dataset.utils as u
    except ImportError as e:
        raise DataError(f"--data elpv needs the package elpv-dataset: pip install elpv-dataset ({e})") from e
    return Path(os.path.dirname(u.__file__)) / "data" / "labels.csv"


def elpv_labels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(file names, class indices 0..3, cell types) of ELPV, read from the package's labels.csv without decoding
    any image; in the order of ``elpv_dataset.utils.load_dataset()``."""
    path = _elpv_csv()
    if not path.is_file():
        raise DataError(f"elpv-dataset is installed but {path} is missing; reinstall elpv-dataset")
    data = np.genfromtxt(path, dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    names = np.char.decode(data["path"])
    classes = np.rint(data["probability"] * 3).astype(np.int64)
    return names, classes, np.char.decode(data["type"])


def _rank_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def stratified_split(
    names: Sequence[str],
    strata: Sequence,
    seed: int = ELPV_SPLIT_SEED,
    fractions: Sequence[float] = ELPV_FRACTIONS,
) -> dict[str, np.ndarray]:
    """Indices of train/val/test: within each stratum, items ordered by ``sha256(f"{seed}:{name}")``; the first
    ``round(n * fractions[0])``... go to train, ``round(n * fractions[1])`` to val, the rest to test. Sorted."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    by_stratum: dict = {}
    for i, s in enumerate(strata):
        by_stratum.setdefault(s, []).append(i)
    parts: dict[str, list[int]] = {k: [] for k in SPLITS}
    for s in sorted(by_stratum, key=str):
        idx = sorted(by_stratum[s], key=lambda i: _rank_key(seed, str(names[i])))
        n = len(idx)
        n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
        n_train = n - n_val - n_test
        parts["train"] += idx[:n_train]
        parts["val"] += idx[n_train : n_train + n_val]
        parts["test"] += idx[n_train + n_val :]
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in parts.items()}


def elpv_split(seed: int = ELPV_SPLIT_SEED) -> dict[str, np.ndarray]:
    """The documented ELPV split: indices into ``load_dataset()``'s order, stratified by class and cell type."""
    names, classes, types = elpv_labels()
    return stratified_split(names, [f"{c}/{t}" for c, t in zip(classes, types, strict=True)], seed)


@functools.lru_cache(maxsize=1)
def _elpv_images() -> torch.Tensor:
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as e:
        raise DataError(f"--data elpv needs the package elpv-dataset: pip install elpv-dataset ({e})") from e
    images, _, _ = load_dataset()
    return torch.from_numpy(np.ascontiguousarray(images))


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, C, H, W]`` -> uint8 ``[N, C, size, size]`` (bilinear, antialiased)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


@functools.lru_cache(maxsize=2)
def _elpv_bundle(image_size: int) -> DataBundle:
    _, classes, _ = elpv_labels()
    images = resize_uint8(_elpv_images(), image_size)
    labels = torch.from_numpy(classes)
    split = elpv_split()
    splits = {k: MemoryDataset(images[torch.from_numpy(v)], labels[torch.from_numpy(v)]) for k, v in split.items()}
    return DataBundle(
        "elpv",
        ELPV_CLASSES,
        image_size,
        splits,
        flips=("h", "v"),
        note=f"ELPV (elpv-dataset), split 70/15/15 stratified by class and cell type, seed {ELPV_SPLIT_SEED}",
    )


# ------------------------------------------------------------------------------------------ ImageFolder


def _scan(root: Path, classes: Sequence[str] | None) -> tuple[list[str], list[Path], list[int]]:
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = dirs
    else:
        extra = [d for d in dirs if d not in classes]
        if extra:
            raise DataError(f"{root} has class folder {extra[0]!r}, which train/ does not have")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for c in dirs:
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                files.append(f)
                labels.append(index[c])
    if not files:
        raise DataError(f"{root} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} in class folders)")
    return list(classes), files, labels


def image_folder(root: str | Path, image_size: int) -> DataBundle:
    """``root/train``, ``root/val`` and optionally ``root/test``, each with one folder per class."""
    root = Path(root)
    for need in ("train", "val"):
        if not (root / need).is_dir():
            raise DataError(f"--data {root}: {root / need} is missing; an image folder needs train/ and val/")
    classes, files, labels = _scan(root / "train", None)
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} has {len(classes)} class folder(s); a classifier needs at least 2")
    splits = {"train": FolderDataset(files, labels, image_size)}
    for name in ("val", "test"):
        if (root / name).is_dir():
            _, f, y = _scan(root / name, classes)
            splits[name] = FolderDataset(f, y, image_size)
    return DataBundle(str(root), tuple(classes), image_size, splits, flips=("h",))


def load_data(spec: str | Path, image_size: int) -> DataBundle:
    """``"elpv"`` or an ImageFolder directory, at ``image_size`` x ``image_size``."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"image size must be an integer >= 8, got {image_size!r}")
    if str(spec) == "elpv":
        return _elpv_bundle(image_size)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"--data {spec}: not a known dataset name (elpv) and not an existing directory")
    if not path.is_dir():
        raise DataError(f"--data {spec} is a file; give an ImageFolder directory (with train/ and val/) or elpv")
    return image_folder(path, image_size)


# ------------------------------------------------------------------------------------------ batches


def flip_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """The generator of one training batch's augmentation: a pure function of (seed, epoch, step, rank)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{step}:{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def prepare_batch(
    x: torch.Tensor,
    device: torch.device | str,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    channels_last: bool = False,
    flips: Sequence[str] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 ``[B, C, S, S]`` -> normalised float ``[B, 3, S, S]`` on ``device``; with ``generator``, each image is
    flipped horizontally ("h") and/or vertically ("v") with probability 1/2."""
    device = torch.device(device)
    x = x.to(device, non_blocking=True).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if generator is not None:
        for axis in flips:
            dim = {"h": -1, "v": -2}[axis]
            mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(device).view(-1, 1, 1, 1)
            x = torch.where(mask, x.flip(dim), x)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def dataset_classes(spec: str | Path) -> tuple[str, ...]:
    """The class names of ``--data`` without reading any image."""
    if str(spec) == "elpv":
        return ELPV_CLASSES
    path = Path(spec)
    if not path.is_dir():
        raise DataError(f"--data {spec}: not a known dataset name (elpv) and not an existing directory")
    if not (path / "train").is_dir():
        raise DataError(f"--data {spec}: {path / 'train'} is missing; an image folder needs train/ and val/")
    return tuple(sorted(d.name for d in (path / "train").iterdir() if d.is_dir() and not d.name.startswith(".")))


def calibration_images(bundle: DataBundle, n: int, split: str = "train") -> torch.Tensor:
    """``n`` images of ``split`` as the network takes them (normalised float32 ``[n, 3, S, S]``), spread evenly
    over the split (every k-th image, so every class is represented): the calibration set of INT8 quantization."""
    ds = bundle.split(split)
    if n < 1 or len(ds) == 0:
        raise DataError(f"INT8 calibration needs at least one image; {bundle.name} {split} has {len(ds)}")
    idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    x = torch.stack([ds[int(i)][0] for i in idx])
    return prepare_batch(x, "cpu", bundle.mean, bundle.std)
