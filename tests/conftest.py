"""Shared fixtures: small real and synthetic data, quiet and isolated runs."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tiny_data():
    """A 4-class synthetic image set whose class is a bright quadrant (learnable fast)."""
    from cooplib.data import Augment, ImageData

    g = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.arange(n) % 4
        x = torch.randint(0, 60, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
        for c in range(4):
            r, q = divmod(c, 2)
            x[y == c, :, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 150
        return x, y

    xtr, ytr = make(96)
    xte, yte = make(40)
    return ImageData(
        name="quadrants", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
        classes=["tl", "tr", "bl", "br"], mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3),
        augment=Augment(crop_pad=1, flip=False),
    )
