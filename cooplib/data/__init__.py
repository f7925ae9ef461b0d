"""Datasets as uint8 tensors by name, and a batch iterator that augments on the device.
May import cooplib.base only (not models, losses or anything above).

``load(name, root, download, **options)`` returns an :class:`ImageData` holding the
whole dataset as uint8 NCHW tensors on the CPU; :class:`DeviceLoader` (loader.py) turns
it into normalised, augmented batches on the training device.

Each source is one module that registers its reader with ``@DATASETS.register(name)``:
cifar.py (cifar10, cifar100), svhn.py, tinyimagenet.py, fashion_mnist.py, digits.py,
npz.py (any .npz file) and folder.py (image files in ImageFolder layout); importing it
here makes the name known. A reader's options are its keyword-only parameters. Datasets
cannot always be downloaded (offline machines, CI): a missing one raises
:class:`DatasetNotFoundError` saying which file to fetch from where and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..base.registry import DATASETS
from . import cifar, digits, fashion_mnist, folder, npz, svhn, tinyimagenet  # noqa: F401  (they register)
from .core import Augment, DatasetNotFoundError, ImageData
from .fashion_mnist import read_idx
from .loader import DeviceLoader, crop_batch, random_crop_flip, sample_crop_flip

__all__ = [
    "Augment", "DATASETS", "DatasetNotFoundError", "DeviceLoader", "ImageData",
    "crop_batch", "default_root", "fingerprint", "load", "names", "random_crop_flip", "read_idx",
    "sample_crop_flip",
]


def names() -> list[str]:
    return DATASETS.names()


def default_root() -> Path:
    """``$COOPLIB_DATA`` if set, else ``~/.cache/cooplib/data``."""
    env = os.environ.get("COOPLIB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cooplib" / "data"


def load(name: str, root: str | Path | None = None, download: bool = False,
         **options) -> ImageData:
    """Load a registered dataset by name; unknown names and options raise ConfigError.

    Options are validated here because papermill only warns about a mistyped parameter.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    return DATASETS.build(name, root, download, **options)


#: what `fingerprint` hashes (changing it changes every fingerprint: bump the tag then)
FINGERPRINT_TAG = b"cooplib-data-fingerprint-1\0"


def fingerprint(data: ImageData) -> str:
    """sha256 (hex) of what a run trains and is tested on: the uint8 images and int64
    labels of both splits (dtype, shape and bytes) and the class names. Recorded in
    config.json (``data.fingerprint``) so that a dataset replaced under the same name or
    path is found when a run is reused or resumed. Cached on `data` (keyed by its tensors)."""
    tensors = (data.x_train, data.y_train, data.x_test, data.y_test)
    key = tuple((id(t), t.data_ptr(), tuple(t.shape)) for t in tensors)
    cached = data.__dict__.get("_fingerprint")
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256(FINGERPRINT_TAG)
    for name, t in zip(("x_train", "y_train", "x_test", "y_test"), tensors):
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}:{a.dtype.str}:{list(a.shape)};".encode())
        h.update(memoryview(a).cast("B"))
    h.update(json.dumps([str(c) for c in data.classes]).encode())
    digest = h.hexdigest()
    data.__dict__["_fingerprint"] = (key, digest)
    return digest
