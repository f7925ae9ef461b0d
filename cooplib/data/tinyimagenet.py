"""Tiny ImageNet-200 from the cs231n zip; the decoded JPEGs are cached as one .npz."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..base.registry import DATASETS
from .core import Augment, DatasetNotFoundError, ImageData, from_arrays, not_found, try_download

_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_CACHE_FILE = "tinyimagenet-cooplib-v1.npz"


def _decode_jpegs(paths: list[Path], size: int = 64) -> np.ndarray:
    """Decode to (N, 3, size, size) uint8; grayscale files become RGB. PIL frees the GIL."""
    from PIL import Image

    def one(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, arr in enumerate(pool.map(one, paths)):
            out[i] = arr
    return out


def _read_tiny(folder: Path) -> dict[str, np.ndarray]:
    wnids = sorted(w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip())
    index = {w: i for i, w in enumerate(wnids)}  # sorted: ImageFolder's label order
    words: dict[str, str] = {}
    if (folder / "words.txt").exists():
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip() or wnid
    train_paths, ytr = [], []
    for w in wnids:
        files = sorted((folder / "train" / w / "images").glob("*.JPEG"))
        train_paths += files
        ytr += [index[w]] * len(files)
    test_paths, yte = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            test_paths.append(folder / "val" / "images" / parts[0])
            yte.append(index[parts[1]])
    return dict(x_train=_decode_jpegs(train_paths), y_train=np.array(ytr, dtype=np.int64),
                x_test=_decode_jpegs(test_paths), y_test=np.array(yte, dtype=np.int64),
                classes=np.array([words.get(w, w) for w in wnids]))


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


@DATASETS.register("tinyimagenet")
def tinyimagenet(root: Path, download: bool, *, cache: bool = True) -> ImageData:
    """Tiny ImageNet-200 (100,000 train / 10,000 val used as test, 64x64 RGB).

    Decoding 110k JPEGs takes minutes, so the decoded arrays are cached next to the folder
    (``root/tinyimagenet-cooplib-v1.npz``; delete it to re-decode). Augment: pad 8 + flip.
    """
    folder = root / "tiny-imagenet-200"
    cache_path = root / _CACHE_FILE
    if cache and cache_path.exists():
        with np.load(cache_path) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        needed = [folder / "wnids.txt", folder / "train", folder / "val" / "val_annotations.txt"]
        if not all(p.exists() for p in needed):
            def error(cause: BaseException | None = None) -> DatasetNotFoundError:
                return not_found("tinyimagenet", root, f"tinyimagenet not found: expected {folder} with "
                                 f"wnids.txt, train/ and val/val_annotations.txt. Download "
                                 f"tiny-imagenet-200.zip from {_URL} and extract it into {root}", cause)
            if not download:
                raise error()
            from torchvision.datasets.utils import download_and_extract_archive
            try_download(lambda: download_and_extract_archive(_URL, str(root)), error)
        arrays = _read_tiny(folder)
        if cache:
            _atomic_savez(cache_path, **arrays)
    return from_arrays("tinyimagenet", arrays["x_train"], arrays["y_train"], arrays["x_test"],
                 arrays["y_test"], arrays["classes"].tolist(), Augment(8, True))
