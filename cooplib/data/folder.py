"""A folder of image files in torchvision's ImageFolder layout: bring-your-own data as
PNG/JPEG files, decoded once and cached as one .npz.

Layout: ``path/train/<class>/**/*.png`` and ``path/test/<class>/**/*.jpg`` (any of
``IMAGE_EXTENSIONS``, any case). The classes are the sorted sub-folder names of train/
(label i = i-th name, as ImageFolder numbers them); test/ must hold the same class
folders. Hidden files and folders (``.ipynb_checkpoints``, ``.DS_Store``) are ignored,
files of other types skipped.

Decoding a large folder takes minutes, so the decoded uint8 tensors, with their
mean/std, are cached as ``root/folder-cache/<name>-<key>.npz``, one file per folder and
options (root: ``data_root``, default ``$COOPLIB_DATA``). The cache records a listing of
the files (relative path, size, mtime), compared on every load: adding, removing,
replacing or touching an image re-reads the folder. Written atomically (temp file +
rename), so a crash or two concurrent workers never leave a torn cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.errors import ConfigError
from ..base.registry import DATASETS
from .core import Augment, DatasetNotFoundError, ImageData, channel_stats, from_arrays

__all__ = ["IMAGE_EXTENSIONS", "folder"]

#: torchvision's ImageFolder extensions (compared in lower case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
#: what the cache holds; bump when its contents or the decoding change
_CACHE_VERSION = "cooplib-folder-cache-1"
#: show a progress bar from this many files on (fewer decode in about a second)
_PROGRESS_FROM = 2000

#: PIL mode -> the mode its pixels are read in, keeping every channel the file has
_NATURAL = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "PA": "RGBA", "RGB": "RGB",
            "RGBX": "RGB", "YCbCr": "RGB", "CMYK": "RGB", "LAB": "RGB", "HSV": "RGB",
            "RGBA": "RGBA", "RGBa": "RGBA"}
_TARGET = {1: "L", 3: "RGB"}


def _check(options: dict[str, Any]) -> None:
    """Rules the type checks cannot express (RunConfig applies them on construction)."""
    path = options.get("path")
    if path is None or (isinstance(path, str) and not path.strip()):
        raise ConfigError("dataset 'folder' needs path=... (a folder holding train/<class>/ and "
                          "test/<class>/ image files, torchvision's ImageFolder layout)")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"dataset 'folder' option path must be a string, got {path!r} ({type(path).__name__})")
    test = options.get("test_folder")
    if not isinstance(test, str) or not test.strip() or test.strip("/") == "train":
        raise ConfigError(f"dataset 'folder' option test_folder must be a folder name like 'test' or 'val', "
                          f"other than 'train', got {test!r}")


@DATASETS.register("folder", ranges={"size": (1, None)}, choices={"channels": tuple(_TARGET)}, check=_check)
def folder(root: Path, download: bool, *, path: str | Path | None = None, size: int | None = None,
           channels: int | None = None, test_folder: str = "test", cache: bool = True) -> ImageData:
    """Images from ``path/train/<class>/`` and ``path/test/<class>/`` (ImageFolder layout).

    All images must share one size and channel count (what the files have: 1 for
    grayscale, 3 for RGB, 4 for RGBA, ...) unless ``size=N`` resizes every image to
    N x N (bilinear, antialiased, aspect ratio not kept) and ``channels=1|3`` converts
    (3 drops an alpha channel). ``test_folder="val"`` reads val/ as the test split.
    Mean/std: the training images' own. Augment: zero-pad min(H, W)//8 + random crop
    (4 for 32 px, as CIFAR) + horizontal flip; use ``augment="crop"`` for images whose
    mirror is another class (digits, text). The dataset's name is the folder's name.
    ``cache=False`` neither reads nor writes the cache. A relative ``path`` is looked
    up in the working directory, then in root.
    """
    _check({"path": path, "test_folder": test_folder})
    base = _find(Path(path).expanduser(), root)
    splits = {"train": base / "train", "test": base / test_folder}
    for split, where in splits.items():
        if not where.is_dir():
            val = " (it has val/: pass test_folder='val')" if split == "test" and (base / "val").is_dir() else ""
            raise DatasetNotFoundError(
                f"image folder {base} has no {where.name}/ folder{val}: expected {base}/train/<class>/*.png "
                f"and {base}/{test_folder}/<class>/*.png (torchvision's ImageFolder layout); it holds "
                f"{_listing_text(base)}")
    classes = _classes(splits["train"])
    test_classes = _classes(splits["test"])
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise ConfigError(f"image folder {base}: train/ and {test_folder}/ must hold the same class folders; "
                          f"only in train/: {only_train or 'none'}, only in {test_folder}/: {only_test or 'none'}")
    files = {split: _files(where, classes) for split, where in splits.items()}
    listing = _listing(base, files)
    cache_path = _cache_path(root, base, size, channels, test_folder)
    arrays = _read_cache(cache_path, listing) if cache else None
    if arrays is None:
        arrays = _decode(base, files, size, channels)
        arrays["mean"], arrays["std"] = map(np.array, channel_stats(torch.from_numpy(arrays["x_train"])))
        if cache:
            _write_cache(cache_path, listing, arrays, classes)
    h, w = arrays["x_train"].shape[2:]
    return from_arrays(base.name, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                       classes, Augment(min(h, w) // 8, True),
                       stats=(tuple(map(float, arrays["mean"])), tuple(map(float, arrays["std"]))))


def _find(p: Path, root: Path) -> Path:
    if not p.exists() and not p.is_absolute() and (root / p).exists():
        p = root / p
    if not p.is_dir():
        what = "is a file, not a folder" if p.exists() else "not found"
        raise DatasetNotFoundError(f"image folder {p} {what} (also looked in {root}): make a folder with "
                                   f"train/<class>/*.png and test/<class>/*.png (torchvision's ImageFolder layout)")
    return p.resolve()


def _visible(entries) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _listing_text(where: Path) -> str:
    names = [e.name + ("/" if e.is_dir() else "") for e in _visible(os.scandir(where))]
    return ", ".join(names[:10]) + (f" ... ({len(names)} entries)" if len(names) > 10 else "") if names else "nothing"


def _classes(split: Path) -> list[str]:
    """The class folders of one split, sorted (ImageFolder's label order)."""
    with os.scandir(split) as it:
        entries = _visible(it)
    names = [e.name for e in entries if e.is_dir()]
    if not names:
        loose = sum(e.is_file() for e in entries)
        raise DatasetNotFoundError(
            f"image folder {split} has no class folders{f' ({loose} loose files)' if loose else ''}: put each "
            f"class's images in a sub-folder named after it, {split}/<class>/*.png")
    return names


def _files(split: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) of every image under each class folder (sub-folders included),
    sorted by path."""
    out = []
    for label, cls in enumerate(classes):
        found, skipped = [], set()
        for dirpath, dirnames, filenames in os.walk(split / cls, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if f.startswith("."):
                    continue
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(Path(dirpath) / f)
                else:
                    skipped.add(Path(f).suffix.lower() or f)
        if not found:
            other = f" (skipped files of other types: {', '.join(sorted(skipped))})" if skipped else ""
            raise ConfigError(f"image folder {split}: class {cls!r} has no images in {split / cls}{other}; "
                              f"images are {', '.join(IMAGE_EXTENSIONS)} files; every class needs images in both "
                              f"splits: add some, or remove the class folder from both")
        out += [(p, label) for p in sorted(found)]
    return out


def _listing(base: Path, files: dict[str, list[tuple[Path, int]]]) -> str:
    """sha256 of every file's split, relative path, label, size and mtime: what the
    cache must match (a stat per file, no decoding)."""
    h = hashlib.sha256(_CACHE_VERSION.encode())
    for split, entries in files.items():
        for p, label in entries:
            st = p.stat()
            h.update(f"{split}\0{p.relative_to(base).as_posix()}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_path(root: Path, base: Path, size: int | None, channels: int | None, test_folder: str) -> Path:
    key = hashlib.sha256(repr((_CACHE_VERSION, str(base), size, channels, test_folder)).encode()).hexdigest()[:16]
    return root / "folder-cache" / f"{base.name}-{key}.npz"


def _read_cache(path: Path, listing: str) -> dict[str, np.ndarray] | None:
    """The cached arrays if they were decoded from these very files, else None."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["listing"]) != listing:
                return None
            return {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test", "mean", "std")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # damaged: decode again, overwrite
        warnings.warn(f"ignoring the unreadable image-folder cache {path} ({type(exc).__name__}: {exc}); "
                      f"decoding the images again", stacklevel=3)
        return None


def _write_cache(path: Path, listing: str, arrays: dict[str, np.ndarray], classes: list[str]) -> None:
    """Temp file + rename in the cache folder; a cache that cannot be written is a warning."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, listing=np.array(listing), classes=np.array(classes), **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write the image-folder cache {path} ({exc}); the images will be decoded "
                      f"again next time (set data_root / $COOPLIB_DATA to a writable folder)", stacklevel=3)
    finally:  # interrupted or failed: no stray temp file
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _decode(base: Path, files: dict[str, list[tuple[Path, int]]], size: int | None,
            channels: int | None) -> dict[str, np.ndarray]:
    """Decode every image to one (N, C, H, W) uint8 array per split; the first training
    image sets the shape all others must have. PIL releases the GIL: threads decode."""
    from PIL import Image
    from tqdm.auto import tqdm

    def one(p: Path) -> np.ndarray:
        try:
            with Image.open(p) as im:
                mode = _natural(im)
                if mode is None:
                    raise ConfigError(f"image {p} has mode {im.mode} (16-bit or float pixels); cooplib reads "
                                      f"8 bits per channel: convert the file (e.g. to an 8-bit PNG)")
                mode = _TARGET.get(channels, mode)
                im = im.convert(mode) if im.mode != mode else im
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except ConfigError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:  # not an image, truncated, unknown format
            raise ConfigError(f"cannot read image {p}: {type(exc).__name__}: {exc}; remove or replace "
                              f"the file") from exc
        return (a[:, :, None] if a.ndim == 2 else a).transpose(2, 0, 1)

    first_path = files["train"][0][0]
    first = one(first_path)
    total = sum(len(v) for v in files.values())
    bar = tqdm(total=total, desc=f"decoding {base.name}", unit="img", dynamic_ncols=True,
               disable=total < _PROGRESS_FROM or os.environ.get("COOPLIB_PROGRESS", "1") == "0")
    out: dict[str, np.ndarray] = {}
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for split, entries in files.items():
            paths = [p for p, _ in entries]
            x = np.empty((len(paths), *first.shape), dtype=np.uint8)
            start = 1 if split == "train" else 0  # the first training image is decoded
            x[:start] = first
            bar.update(start)
            for i, a in enumerate(pool.map(one, paths[start:]), start):
                if a.shape != first.shape:
                    raise ConfigError(_mismatch(paths[i], a.shape, first_path, first.shape))
                x[i] = a
                bar.update(1)
            out[f"x_{split}"] = x
            out[f"y_{split}"] = np.array([label for _, label in entries], dtype=np.int64)
    finally:  # on an error, stop at once instead of decoding the rest first
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return out


def _natural(im) -> str | None:
    """The mode that keeps what the file has (palette: RGB, or RGBA if it has
    transparency); None for 16-bit / float pixels (converting them to 8 bits clips)."""
    if im.mode == "P":
        return "RGBA" if "transparency" in im.info else "RGB"
    return _NATURAL.get(im.mode)


def _mismatch(p: Path, shape: tuple, first: Path, first_shape: tuple) -> str:
    """Which of size and channel count differ, and the option that reconciles each."""
    (c, h, w), (c0, h0, w0) = shape, first_shape
    fixes = []
    if (h, w) != (h0, w0):
        fixes.append("size=N to resize every image to N x N")
    if c != c0:
        fixes.append("channels=3 (RGB) or channels=1 (grayscale) to convert them")
    return (f"image {p} is {w}x{h} pixels (width x height) with {c} channel(s) but {first} is {w0}x{h0} with "
            f"{c0}: all images must have one size and channel count; pass {', and '.join(fixes)}")
