"""CIFAR-10 and CIFAR-100 from the python-pickle archives of the CIFAR site."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..base.registry import DATASETS
from .core import Augment, DatasetNotFoundError, ImageData, from_arrays, not_found, try_download

_SPECS = {
    "cifar10": dict(
        folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
        meta="batches.meta", labels="labels", names="label_names",
        # The published per-channel statistics of the CIFAR-10 training set.
        stats=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    "cifar100": dict(
        folder="cifar-100-python", archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        train=["train"], test=["test"], meta="meta",
        labels="fine_labels", names="fine_label_names",
        stats=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
}


def _unpickle(path: Path) -> dict:
    """The CIFAR pickles were written by Python 2; latin1 decodes both them and py3 ones."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_cifar(folder: Path, spec: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fname in spec[split]:
        d = _unpickle(folder / fname)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[spec["labels"]], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _load_cifar(key: str, root: Path, download: bool) -> ImageData:
    spec = _SPECS[key]
    folder = root / spec["folder"]
    needed = [folder / f for f in [*spec["train"], *spec["test"], spec["meta"]]]

    def error(cause: BaseException | None = None) -> DatasetNotFoundError:
        missing = ", ".join(p.name for p in needed if not p.exists())
        return not_found(key, root, f"{key} not found: missing {missing} in {folder}. Download "
                         f"{spec['archive']} from {spec['url']} and extract it into {root} (it "
                         f"unpacks to {folder})", cause)

    if not all(p.exists() for p in needed):
        if not download:
            raise error()
        import torchvision.datasets as tvd
        cls = tvd.CIFAR10 if key == "cifar10" else tvd.CIFAR100
        try_download(lambda: cls(str(root), train=True, download=True), error)
        if not all(p.exists() for p in needed):
            raise error()
    xtr, ytr = _read_cifar(folder, spec, "train")
    xte, yte = _read_cifar(folder, spec, "test")
    classes = _unpickle(folder / spec["meta"])[spec["names"]]
    return from_arrays(key, xtr, ytr, xte, yte, classes, Augment(4, True), stats=spec["stats"])


@DATASETS.register("cifar10")
def cifar10(root: Path, download: bool) -> ImageData:
    """CIFAR-10 (50,000 / 10,000 32x32 RGB). Augment: pad 4 + flip (ResNet papers)."""
    return _load_cifar("cifar10", root, download)


@DATASETS.register("cifar100")
def cifar100(root: Path, download: bool) -> ImageData:
    """CIFAR-100 with fine labels. Augment: pad 4 + flip (ONE, DML, KD papers)."""
    return _load_cifar("cifar100", root, download)
