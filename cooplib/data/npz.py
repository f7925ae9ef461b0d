"""Any .npz file of uint8 images and integer labels: bring-your-own data without code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base.registry import DATASETS
from .core import Augment, DatasetNotFoundError, ImageData, from_arrays

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


@DATASETS.register("npz")
def npz(root: Path, download: bool, *, path: str | Path | None = None) -> ImageData:
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
    return from_arrays(p.stem, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                 arrays["y_test"], classes, Augment.none() if small else Augment(4, True))
