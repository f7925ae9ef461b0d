"""Shared fixtures: small real and synthetic data, quiet and isolated runs."""
from __future__ import annotations

import pytest
import torch


def quadrants() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """96 train + 40 test 8x8 RGB images of 4 classes: the class is a bright quadrant."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.arange(n) % 4
        x = torch.randint(0, 60, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
        for c in range(4):
            r, q = divmod(c, 2)
            x[y == c, :, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 150
        return x, y

    return (*make(96), *make(40))


@pytest.fixture(scope="session")
def quadrants_npz(tmp_path_factory):
    """The same images as an `npz` dataset file (for runs started by name, in subprocesses)."""
    import numpy as np

    xtr, ytr, xte, yte = quadrants()
    path = tmp_path_factory.mktemp("data") / "quadrants.npz"
    np.savez(path, x_train=xtr.numpy(), y_train=ytr.numpy(), x_test=xte.numpy(), y_test=yte.numpy())
    return path


@pytest.fixture
def tiny_data():
    """A 4-class synthetic image set whose class is a bright quadrant (learnable fast)."""
    from cooplib.data import Augment, ImageData

    xtr, ytr, xte, yte = quadrants()
    return ImageData(
        name="quadrants", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
        classes=["tl", "tr", "bl", "br"], mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3),
        augment=Augment(crop_pad=1, flip=False),
    )


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: CPU kernels may reduce in another order from run
    to run with several threads, so bit-identical comparisons need one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def net():
    """A resnet8 (4 classes, 3 channels) whose BN running statistics are away from their
    init, so "untouched" is a real check for the perturbation tests."""
    from cooplib.models import build

    torch.manual_seed(0)
    model = build("resnet8", 4, 3)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 8, 8))
    return model.eval()
