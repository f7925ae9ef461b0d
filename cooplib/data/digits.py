"""scikit-learn's 8x8 digits: offline, tiny, the smoke profile's dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..base.registry import DATASETS
from .core import Augment, ImageData, from_arrays, stratified_indices

@DATASETS.register("digits")
def digits(root: Path, download: bool, *, test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's 1,797 8x8 digits, a fixed stratified split (seed 0). Augment: pad 1.

    Ships inside the scikit-learn wheel, so it works offline; ``root`` is unused. Values
    0..16 are scaled to 0..255. No flip: mirrored digits are different digits.
    """
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    test = stratified_indices(torch.from_numpy(y), int(round(test_fraction * len(y))), 0,
                               "digits").numpy()
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    return from_arrays("digits", x[~is_test], y[~is_test], x[is_test], y[is_test],
                 [str(i) for i in range(10)], Augment(1, False))
