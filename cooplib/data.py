"""Datasets as uint8 tensors, and a batch iterator that augments on the device.

Every loader returns an :class:`ImageData` holding the whole dataset as uint8 NCHW
tensors on the CPU. :class:`DeviceLoader` moves them once to the training device and
builds every batch there (permutation, crop, flip, normalisation) so that a step never
waits for the host: the "dataset on the device" trick of airbench / hlb-CIFAR10, with
the augmentation kept identical in distribution to torchvision's
``RandomCrop(size, padding=p)`` + ``RandomHorizontalFlip()`` + ``ToTensor`` + ``Normalize``.

Datasets cannot always be downloaded (offline machines, CI). A missing dataset raises
:class:`DatasetNotFoundError` saying which file to fetch from where and where to put it.
"""

from __future__ import annotations

import difflib
import gzip
import inspect
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Augment", "DATASETS", "DatasetNotFoundError", "DeviceLoader", "ImageData",
    "crop_batch", "default_root", "load", "names", "random_crop_flip", "read_idx",
    "sample_crop_flip",
]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says what to download and where to put it."""


# ---------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------

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
        changing the input scaling.
        """
        itr = _stratified_indices(self.y_train, n_train, seed, f"{self.name} train")
        ite = _stratified_indices(self.y_test, n_test, seed + 1, f"{self.name} test")
        return replace(self, x_train=self.x_train[itr], y_train=self.y_train[itr],
                       x_test=self.x_test[ite], y_test=self.y_test[ite])

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"classes={self.num_classes}, channels={self.in_channels}, "
                f"size={self.image_size}, augment={self.augment})")


def _stratified_indices(y: torch.Tensor, n: int | None, seed: int, what: str) -> torch.Tensor:
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


def _channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _make(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
          classes: Sequence[str], augment: Augment,
          stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> ImageData:
    x_train = _tensor(xtr, np.uint8)
    mean, std = stats if stats is not None else _channel_stats(x_train)
    return ImageData(
        name=name, x_train=x_train, y_train=_tensor(ytr, np.int64).reshape(-1),
        x_test=_tensor(xte, np.uint8), y_test=_tensor(yte, np.int64).reshape(-1),
        classes=[str(c) for c in classes], mean=tuple(mean), std=tuple(std), augment=augment)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

DATASETS: dict[str, Callable[..., ImageData]] = {}


def _register(name: str) -> Callable[[Callable[..., ImageData]], Callable[..., ImageData]]:
    def deco(fn: Callable[..., ImageData]) -> Callable[..., ImageData]:
        DATASETS[name] = fn
        return fn
    return deco


def names() -> list[str]:
    return sorted(DATASETS)


def default_root() -> Path:
    """``$COOPLIB_DATA`` if set, else ``~/.cache/cooplib/data``."""
    env = os.environ.get("COOPLIB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cooplib" / "data"


def load(name: str, root: str | Path | None = None, download: bool = False,
         **options) -> ImageData:
    """Load a registered dataset by name; unknown names and options fail loudly.

    Options are validated here because papermill only warns about a mistyped parameter.
    """
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        close = difflib.get_close_matches(key, names(), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}: available are {', '.join(names())}{hint}")
    loader = DATASETS[key]
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("root", "download")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {key!r} has no option(s) {unknown}; "
                         f"it accepts {accepted or 'none'}")
    root = Path(root).expanduser() if root is not None else default_root()
    return loader(root=root, download=download, **options)


def _try_download(fetch: Callable[[], object], make_error: Callable[[BaseException], Exception]) -> None:
    """Run a torchvision download; turn network/archive failures into a clear error."""
    try:
        fetch()
    except (OSError, RuntimeError, ValueError) as exc:  # URLError, HTTPError, md5 mismatch
        raise make_error(exc) from exc


# ---------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------

_CIFAR = {
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
    spec = _CIFAR[key]
    folder = root / spec["folder"]
    needed = [folder / f for f in [*spec["train"], *spec["test"], spec["meta"]]]

    def error(cause: BaseException | None = None) -> DatasetNotFoundError:
        missing = ", ".join(p.name for p in needed if not p.exists())
        return DatasetNotFoundError(
            f"{key} not found: missing {missing} in {folder}. Download {spec['archive']} from "
            f"{spec['url']} and extract it into {root} (it unpacks to {folder}), or call "
            f"cooplib.data.load({key!r}, root={str(root)!r}, download=True) with internet access."
            + (f" The download failed: {type(cause).__name__}: {cause}" if cause else ""))

    if not all(p.exists() for p in needed):
        if not download:
            raise error()
        import torchvision.datasets as tvd
        cls = tvd.CIFAR10 if key == "cifar10" else tvd.CIFAR100
        _try_download(lambda: cls(str(root), train=True, download=True), error)
        if not all(p.exists() for p in needed):
            raise error()
    xtr, ytr = _read_cifar(folder, spec, "train")
    xte, yte = _read_cifar(folder, spec, "test")
    classes = _unpickle(folder / spec["meta"])[spec["names"]]
    return _make(key, xtr, ytr, xte, yte, classes, Augment(4, True), stats=spec["stats"])


@_register("cifar10")
def _cifar10(root: Path, download: bool) -> ImageData:
    """CIFAR-10 (50,000 / 10,000 32x32 RGB). Augment: pad 4 + flip (ResNet papers)."""
    return _load_cifar("cifar10", root, download)


@_register("cifar100")
def _cifar100(root: Path, download: bool) -> ImageData:
    """CIFAR-100 with fine labels. Augment: pad 4 + flip (ONE, DML, KD papers)."""
    return _load_cifar("cifar100", root, download)


# ---------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------

_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io
    m = scipy.io.loadmat(str(path))
    x = np.transpose(m["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    y = np.asarray(m["y"], dtype=np.int64).reshape(-1) % 10  # label 10 is the digit 0
    return x, y


@_register("svhn")
def _svhn(root: Path, download: bool, extra: bool = False) -> ImageData:
    """SVHN cropped digits; ``extra=True`` adds the 531k extra images to train (ONE paper).

    No augmentation by default, as in the papers. Files are looked for in root/svhn and root
    (torchvision's layout); downloads go to root/svhn.
    """
    splits = ["train", "test"] + (["extra"] if extra else [])
    files = [f"{s}_32x32.mat" for s in splits]
    folders = [root / "svhn", root]
    folder = next((d for d in folders if all((d / f).exists() for f in files)), None)
    if folder is None:
        target = root / "svhn"

        def error(cause: BaseException | None = None) -> DatasetNotFoundError:
            missing = [f for f in files if not (target / f).exists()]
            return DatasetNotFoundError(
                f"svhn not found: missing {', '.join(missing)} in {target} (also looked in "
                f"{root}). Download {' and '.join(_SVHN_URL + f for f in missing)} into "
                f"{target}, or call cooplib.data.load('svhn', root={str(root)!r}, "
                f"download=True) with internet access."
                + (f" The download failed: {type(cause).__name__}: {cause}" if cause else ""))
        if not download:
            raise error()
        import torchvision.datasets as tvd
        for s in splits:
            if not (target / f"{s}_32x32.mat").exists():
                _try_download(lambda s=s: tvd.SVHN(str(target), split=s, download=True), error)
        folder = target
    parts = {s: _read_svhn(folder / f"{s}_32x32.mat") for s in splits}
    xtr = np.concatenate([parts[s][0] for s in splits if s != "test"])
    ytr = np.concatenate([parts[s][1] for s in splits if s != "test"])
    name = "svhn+extra" if extra else "svhn"
    return _make(name, xtr, ytr, *parts["test"], [str(i) for i in range(10)], Augment.none())


# ---------------------------------------------------------------------------------------
# Tiny ImageNet
# ---------------------------------------------------------------------------------------

_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_CACHE = "tinyimagenet-cooplib-v1.npz"


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


@_register("tinyimagenet")
def _tinyimagenet(root: Path, download: bool, cache: bool = True) -> ImageData:
    """Tiny ImageNet-200 (100,000 train / 10,000 val used as test, 64x64 RGB).

    Decoding 110k JPEGs takes minutes, so the decoded arrays are cached next to the folder
    (``root/tinyimagenet-cooplib-v1.npz``; delete it to re-decode). Augment: pad 8 + flip.
    """
    folder = root / "tiny-imagenet-200"
    cache_path = root / _TINY_CACHE
    if cache and cache_path.exists():
        with np.load(cache_path) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        needed = [folder / "wnids.txt", folder / "train", folder / "val" / "val_annotations.txt"]
        if not all(p.exists() for p in needed):
            def error(cause: BaseException | None = None) -> DatasetNotFoundError:
                return DatasetNotFoundError(
                    f"tinyimagenet not found: expected {folder} with wnids.txt, train/ and "
                    f"val/val_annotations.txt. Download tiny-imagenet-200.zip from {_TINY_URL} "
                    f"and extract it into {root}, or call cooplib.data.load('tinyimagenet', "
                    f"root={str(root)!r}, download=True) with internet access."
                    + (f" The download failed: {type(cause).__name__}: {cause}" if cause else ""))
            if not download:
                raise error()
            from torchvision.datasets.utils import download_and_extract_archive
            _try_download(lambda: download_and_extract_archive(_TINY_URL, str(root)), error)
        arrays = _read_tiny(folder)
        if cache:
            _atomic_savez(cache_path, **arrays)
    return _make("tinyimagenet", arrays["x_train"], arrays["y_train"], arrays["x_test"],
                 arrays["y_test"], arrays["classes"].tolist(), Augment(8, True))


# ---------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Debian's dataset-fashion-mnist package installs the four .gz files here.
_FASHION_SYSTEM = [Path("/usr/share/datasets/fashion-mnist"),
                   Path("/usr/local/share/datasets/fashion-mnist")]


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (``.gz`` or raw) holding unsigned bytes, checking its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic number "
                         f"{raw[:4].hex() or 'missing'}, expected 000008xx); "
                         f"the file is corrupt or of another format: download it again")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes of data, "
                         f"file has {len(raw) - start}: truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.exists():
            return p
    return None


@_register("fashion-mnist")
def _fashion_mnist(root: Path, download: bool) -> ImageData:
    """Fashion-MNIST (60,000 / 10,000 28x28 gray). Augment: pad 2 + flip.

    Looked for in root/fashion-mnist, root/FashionMNIST/raw (torchvision) and
    /usr/share/datasets/fashion-mnist (Debian's ``dataset-fashion-mnist`` package).
    """
    candidates = [root / "fashion-mnist", root / "FashionMNIST" / "raw", *_FASHION_SYSTEM]

    def locate() -> list[Path] | None:
        for d in candidates:
            found = [_find_idx(d, s) for s in _FASHION_FILES]
            if all(found):
                return found  # type: ignore[return-value]
        return None

    found = locate()
    if found is None:
        def error(cause: BaseException | None = None) -> DatasetNotFoundError:
            return DatasetNotFoundError(
                f"fashion-mnist not found: expected {', '.join(s + '.gz' for s in _FASHION_FILES)} "
                f"in {root / 'fashion-mnist'} (also searched {', '.join(map(str, candidates[1:]))})."
                f" Download them from {_FASHION_URL}, or `apt-get install dataset-fashion-mnist` "
                f"on Debian/Ubuntu, or call cooplib.data.load('fashion-mnist', "
                f"root={str(root)!r}, download=True) with internet access."
                + (f" The download failed: {type(cause).__name__}: {cause}" if cause else ""))
        if not download:
            raise error()
        import torchvision.datasets as tvd
        _try_download(lambda: tvd.FashionMNIST(str(root), train=True, download=True), error)
        found = locate()
        if found is None:
            raise error()
    xtr, ytr, xte, yte = (read_idx(p) for p in found)
    return _make("fashion-mnist", xtr[:, None], ytr, xte[:, None], yte, _FASHION_CLASSES,
                 Augment(2, True))


# ---------------------------------------------------------------------------------------
# scikit-learn digits (offline; the smoke profile's dataset)
# ---------------------------------------------------------------------------------------

@_register("digits")
def _digits(root: Path, download: bool, test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's 1,797 8x8 digits, a fixed stratified split (seed 0). Augment: pad 1.

    Ships inside the scikit-learn wheel, so it works offline; ``root`` is unused. Values
    0..16 are scaled to 0..255. No flip: mirrored digits are different digits.
    """
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    test = _stratified_indices(torch.from_numpy(y), int(round(test_fraction * len(y))), 0,
                               "digits").numpy()
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    return _make("digits", x[~is_test], y[~is_test], x[is_test], y[is_test],
                 [str(i) for i in range(10)], Augment(1, False))


# ---------------------------------------------------------------------------------------
# Any .npz file
# ---------------------------------------------------------------------------------------

def _to_nchw(a: np.ndarray, what: str) -> np.ndarray:
    """NHW -> N1HW; NHWC -> NCHW when the channel axis (1 or 3) is last and not second."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        if a.shape[1] in (1, 3):
            return a
        if a.shape[3] in (1, 3):
            return a.transpose(0, 3, 1, 2)
    raise ValueError(f"{what}: expected images as (N, H, W), (N, C, H, W) or (N, H, W, C) with "
                     f"C in (1, 3), got shape {a.shape}")


@_register("npz")
def _npz(root: Path, download: bool, path: str | Path | None = None) -> ImageData:
    """Images from an .npz with x_train, y_train, x_test, y_test (uint8), optional classes.

    Augment: pad 4 + flip, or none for images smaller than 16 px (too small to crop).
    A relative ``path`` is looked up in the working directory, then in root.
    """
    if path is None:
        raise ValueError("dataset 'npz' needs path=... (an .npz file)")
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and (root / p).exists():
        p = root / p
    if not p.exists():
        raise DatasetNotFoundError(f"npz dataset file {p} not found (also looked in {root}): "
                                   f"create it with numpy.savez(x_train=..., y_train=..., "
                                   f"x_test=..., y_test=...)")
    with np.load(p, allow_pickle=False) as z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise ValueError(f"{p}: missing arrays {missing} (has {z.files})")
        arrays = {k: z[k] for k in z.files}
    for k in ("x_train", "x_test"):
        if arrays[k].dtype != np.uint8:
            raise ValueError(f"{p}: {k} must be uint8 images in 0..255, got {arrays[k].dtype}")
        arrays[k] = _to_nchw(arrays[k], f"{p}: {k}")
    for k in ("y_train", "y_test"):
        if not np.issubdtype(arrays[k].dtype, np.integer):
            raise ValueError(f"{p}: {k} must hold integer labels, got {arrays[k].dtype}")
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"].tolist()]
    else:
        top = max(int(arrays["y_train"].max(initial=0)), int(arrays["y_test"].max(initial=0)))
        classes = [str(i) for i in range(top + 1)]
    small = min(arrays["x_train"].shape[2:]) < 16
    return _make(p.stem, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                 arrays["y_test"], classes, Augment.none() if small else Augment(4, True))


# ---------------------------------------------------------------------------------------
# Batched augmentation
# ---------------------------------------------------------------------------------------

def sample_crop_flip(n: int, pad: int, flip: bool, generator: torch.Generator,
                     device: torch.device | str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image crop offsets in [0, 2*pad] and flip decisions (p = 0.5), on the device."""
    device = generator.device if device is None else torch.device(device)
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    else:
        oy = ox = torch.zeros(n, dtype=torch.long, device=device)
    if flip:
        fl = torch.rand(n, generator=generator, device=device) < 0.5
    else:
        fl = torch.zeros(n, dtype=torch.bool, device=device)
    return oy, ox, fl


def crop_batch(x: torch.Tensor, pad: int, offsets_y: torch.Tensor, offsets_x: torch.Tensor,
               flip: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-pad every image by ``pad`` and cut an HxW window at its own offset, in one gather.

    Equals ``F.pad(x[i], (pad,) * 4)[:, oy:oy + H, ox:ox + W]`` per image, followed by
    ``torch.flip(..., [-1])`` where ``flip[i]``. The result has channels_last strides.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    nhwc = padded.permute(0, 2, 3, 1)
    rows = offsets_y.view(n, 1) + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip is not None:
        cols = torch.where(flip.view(n, 1), w - 1 - cols, cols)
    cols = cols + offsets_x.view(n, 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = nhwc[batch, rows.view(n, h, 1), cols.view(n, 1, w)]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool,
                     generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomCrop(padding=pad) + RandomHorizontalFlip on a whole uint8 batch."""
    if pad == 0 and not flip:
        return x
    return crop_batch(x, pad, *sample_crop_flip(len(x), pad, flip, generator, x.device))


# ---------------------------------------------------------------------------------------
# Device-resident loader
# ---------------------------------------------------------------------------------------

class DeviceLoader:
    """Iterate (x, y) batches with the whole dataset resident on ``device`` as uint8.

    Shuffling and augmentation draw from the loader's own generator on the device, so
    the sequence is fixed by ``seed`` and resumable via :meth:`state_dict`, and no step
    synchronises with the host.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                 device: torch.device | str, mean: Sequence[float], std: Sequence[float],
                 augment: Augment | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not len(mean) == len(std) == x.shape[1]:
            raise ValueError(f"mean/std need {x.shape[1]} channels, got {len(mean)}/{len(std)}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.augment = augment if augment is not None else Augment.none()
        self.shuffle, self.drop_last, self.channels_last = shuffle, drop_last, channels_last
        self.seed = seed
        self.epoch = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        m = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # (v/255 - m)/s as one fused multiply-add.
        self._scale = 1.0 / (255.0 * s)
        self._shift = -m / s

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 ``(x/255 - mean)/std``, like ToTensor + Normalize."""
        out = torch.addcmul(self._shift, xb.float(), self._scale)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)

    def __iter__(self):
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        self.epoch += 1
        a = self.augment
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x.index_select(0, idx)
            yb = self.y.index_select(0, idx)
            if a.active:
                xb = random_crop_flip(xb, a.crop_pad, a.flip, self.generator)
            yield self.normalize(xb), yb

    def state_dict(self) -> dict:
        """The generator state (a CPU uint8 tensor) and epoch count; take it between epochs."""
        return {"rng": self.generator.get_state(), "epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"].cpu())
        self.epoch = int(d["epoch"])
        self.seed = int(d["seed"])
