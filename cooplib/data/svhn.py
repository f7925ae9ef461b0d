"""SVHN cropped digits (the .mat files of the Stanford site), optionally with ``extra``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base.registry import DATASETS
from .core import Augment, DatasetNotFoundError, ImageData, from_arrays, not_found, try_download

_URL = "http://ufldl.stanford.edu/housenumbers/"


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io
    m = scipy.io.loadmat(str(path))
    x = np.transpose(m["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    y = np.asarray(m["y"], dtype=np.int64).reshape(-1) % 10  # label 10 is the digit 0
    return x, y


@DATASETS.register("svhn")
def svhn(root: Path, download: bool, *, extra: bool = False) -> ImageData:
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
            return not_found("svhn", root, f"svhn not found: missing {', '.join(missing)} in {target} "
                             f"(also looked in {root}). Download "
                             f"{' and '.join(_URL + f for f in missing)} into {target}", cause)
        if not download:
            raise error()
        import torchvision.datasets as tvd
        for s in splits:
            if not (target / f"{s}_32x32.mat").exists():
                try_download(lambda s=s: tvd.SVHN(str(target), split=s, download=True), error)
        folder = target
    parts = {s: _read_svhn(folder / f"{s}_32x32.mat") for s in splits}
    xtr = np.concatenate([parts[s][0] for s in splits if s != "test"])
    ytr = np.concatenate([parts[s][1] for s in splits if s != "test"])
    name = "svhn+extra" if extra else "svhn"
    return from_arrays(name, xtr, ytr, *parts["test"], [str(i) for i in range(10)], Augment.none())
