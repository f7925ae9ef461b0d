"""What every dataset source shares: the ImageData and Augment types, building them from
numpy arrays, class-stratified subsets, and the error for files that are missing."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..base.errors import ConfigError, DatasetNotFoundError

__all__ = ["Augment", "DatasetNotFoundError", "ImageData", "channel_stats", "from_arrays",
           "not_found", "stratified_indices", "try_download"]


@dataclass
class Augment:
    """Training augmentation: zero-pad + random crop, random horizontal flip."""

    crop_pad: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        if self.crop_pad < 0:
            raise ValueError(f"crop_pad must be >= 0, got {self.crop_pad}")

    @classmethod
    def none(cls) -> "Augment":
        return cls(crop_pad=0, flip=False)

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip

    def named(self, name: str) -> "Augment":
        """The augmentation a run asks for by name (`RunConfig.augment`), relative to this
        one, the dataset's paper default: default, none, crop, flip, crop+flip."""
        pad = self.crop_pad or 4
        return {
            "default": self,
            "none": Augment.none(),
            "crop": Augment(crop_pad=pad, flip=False),
            "flip": Augment(crop_pad=0, flip=True),
            "crop+flip": Augment(crop_pad=pad, flip=True),
        }[name]


@dataclass
class ImageData:
    """A whole image-classification dataset as uint8 NCHW tensors on the CPU."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(f"{self.name}: x_{split} must be uint8 (N, C, H, W), "
                                 f"got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: y_{split} must be int64 ({x.shape[0]},), "
                                 f"got {y.dtype} {tuple(y.shape)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise ValueError(f"{self.name}: y_{split} has labels outside "
                                 f"0..{len(self.classes) - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images {tuple(self.x_train.shape[1:])} and "
                             f"test images {tuple(self.x_test.shape[1:])} differ in shape")
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise ValueError(f"{self.name}: mean/std need {self.in_channels} channels")
        flat = [c for c, s in enumerate(self.std) if not s > 0]
        if flat:
            raise ValueError(f"{self.name}: the training images are constant in channel(s) {flat} (std 0), so "
                             f"normalisation would divide by zero; check that the file holds real images")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def subset(self, n_train: int | None, n_test: int | None, seed: int = 0) -> "ImageData":
        """A class-stratified subset (proportional to class frequency), deterministic in seed.

        Mean and std are kept from the full data: a subset is for running faster, not for
        changing the input scaling. A training subset needs at least one image per class.
        """
        if n_train is not None and n_train < self.num_classes:
            raise ConfigError(f"train_size={n_train} is below the {self.num_classes} classes of {self.name}: a "
                              f"class-stratified subset needs at least one image per class; use train_size >= "
                              f"{self.num_classes} (or None for all {len(self.y_train)} images)")
        itr = stratified_indices(self.y_train, n_train, seed, f"{self.name} train")
        ite = stratified_indices(self.y_test, n_test, seed + 1, f"{self.name} test")
        return replace(self, x_train=self.x_train[itr], y_train=self.y_train[itr],
                       x_test=self.x_test[ite], y_test=self.y_test[ite])

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"classes={self.num_classes}, channels={self.in_channels}, "
                f"size={self.image_size}, augment={self.augment})")


def stratified_indices(y: torch.Tensor, n: int | None, seed: int, what: str) -> torch.Tensor:
    """Indices of n samples, each class getting its share (largest remainder), sorted."""
    total = len(y)
    if n is None:
        return torch.arange(total)
    if n < 0 or n > total:
        raise ValueError(f"{what}: asked for {n} samples, only {total} available")
    labels = y.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / total
    take = np.floor(exact).astype(int)
    short = n - take.sum()
    take[np.argsort(-(exact - take), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return torch.from_numpy(np.sort(np.concatenate(chosen))).long()


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, in float64 chunks (SVHN+extra is 1.8e9 values)."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        b = x[i:i + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        s += b.sum(1)
        s2 += b.square().sum(1)
    count = x.numel() // c
    mean = s / count
    std = (s2 / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _tensor(a: np.ndarray, dtype: type) -> torch.Tensor:
    """A contiguous, writable (torch requires it) tensor that owns its memory when needed."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def from_arrays(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                classes: Sequence[str], augment: Augment,
                stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> ImageData:
    """An ImageData from a source's arrays; ``stats`` default to the training images' own."""
    x_train = _tensor(xtr, np.uint8)
    mean, std = stats if stats is not None else channel_stats(x_train)
    return ImageData(
        name=name, x_train=x_train, y_train=_tensor(ytr, np.int64).reshape(-1),
        x_test=_tensor(xte, np.uint8), y_test=_tensor(yte, np.int64).reshape(-1),
        classes=[str(c) for c in classes], mean=tuple(mean), std=tuple(std), augment=augment)


def not_found(name: str, root: Path, what: str, cause: BaseException | None = None) -> DatasetNotFoundError:
    """The error for a missing dataset: ``what`` says where to get it by hand; the rest how
    to let cooplib download it, and why that failed if it was tried."""
    return DatasetNotFoundError(
        f"{what}, or call cooplib.data.load({name!r}, root={str(root)!r}, download=True) with internet access."
        + (f" The download failed: {type(cause).__name__}: {cause}" if cause else ""))


def try_download(fetch: Callable[[], object], make_error: Callable[[BaseException], Exception]) -> None:
    """Run a torchvision download; turn network/archive failures into a clear error."""
    try:
        fetch()
    except (OSError, RuntimeError, ValueError) as exc:  # URLError, HTTPError, md5 mismatch
        raise make_error(exc) from exc
