"""Fashion-MNIST from its IDX files (the Zalando site, torchvision's layout or Debian's package)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..base.registry import DATASETS
from .core import Augment, DatasetNotFoundError, ImageData, from_arrays, not_found, try_download

_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Debian's dataset-fashion-mnist package installs the four .gz files here.
SYSTEM_FOLDERS = [Path("/usr/share/datasets/fashion-mnist"),
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


@DATASETS.register("fashion-mnist")
def fashion_mnist(root: Path, download: bool) -> ImageData:
    """Fashion-MNIST (60,000 / 10,000 28x28 gray). Augment: pad 2 + flip.

    Looked for in root/fashion-mnist, root/FashionMNIST/raw (torchvision) and
    /usr/share/datasets/fashion-mnist (Debian's ``dataset-fashion-mnist`` package).
    """
    candidates = [root / "fashion-mnist", root / "FashionMNIST" / "raw", *SYSTEM_FOLDERS]

    def locate() -> list[Path] | None:
        for d in candidates:
            found = [_find_idx(d, s) for s in _FILES]
            if all(found):
                return found  # type: ignore[return-value]
        return None

    found = locate()
    if found is None:
        def error(cause: BaseException | None = None) -> DatasetNotFoundError:
            return not_found("fashion-mnist", root, f"fashion-mnist not found: expected "
                             f"{', '.join(s + '.gz' for s in _FILES)} in {root / 'fashion-mnist'} "
                             f"(also searched {', '.join(map(str, candidates[1:]))}). Download them from "
                             f"{_URL}, or `apt-get install dataset-fashion-mnist` on Debian/Ubuntu",
                             cause)
        if not download:
            raise error()
        import torchvision.datasets as tvd
        try_download(lambda: tvd.FashionMNIST(str(root), train=True, download=True), error)
        found = locate()
        if found is None:
            raise error()
    xtr, ytr, xte, yte = (read_idx(p) for p in found)
    return from_arrays("fashion-mnist", xtr[:, None], ytr, xte[:, None], yte, _CLASSES,
                 Augment(2, True))
