"""Batches built on the training device: shuffle, crop, flip and normalise without the host.

:class:`DeviceLoader` moves a whole uint8 dataset once to the device and builds every
batch there, so that a step never waits for the host: the "dataset on the device" trick
of airbench / hlb-CIFAR10, with the augmentation identical in distribution to
torchvision's ``RandomCrop(size, padding=p)`` + ``RandomHorizontalFlip()`` + ``ToTensor``
+ ``Normalize``.

With ``views`` = V > 1 every batch comes as V independently augmented views of the same
images, one (V, B, C, H, W) tensor (labels once, (B,)), for methods that give each peer its
own view (KDCL, PCL): the V copies are cropped and flipped in the same single gather, so
V = 1 draws exactly what a single-view loader always drew.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .core import Augment

__all__ = ["DeviceLoader", "crop_batch", "random_crop_flip", "sample_crop_flip"]


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


class DeviceLoader:
    """Iterate (x, y) batches (``with_index``: (x, y, index)) with the whole dataset
    resident on ``device`` as uint8.

    Shuffling and augmentation draw from the loader's own generator on the device, so
    the sequence is fixed by ``seed`` and resumable via :meth:`state_dict`, and no step
    synchronises with the host. ``views`` > 1 yields x as (views, B, C, H, W): the same
    images, each view augmented independently (see the module doc).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                 device: torch.device | str, mean: Sequence[float], std: Sequence[float],
                 augment: Augment | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False, views: int = 1,
                 with_index: bool = False) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(views) != views or views < 1:
            raise ValueError(f"views must be an integer >= 1, got {views!r}")
        if not len(mean) == len(std) == x.shape[1]:
            raise ValueError(f"mean/std need {x.shape[1]} channels, got {len(mean)}/{len(std)}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.augment = augment if augment is not None else Augment.none()
        self.shuffle, self.drop_last, self.channels_last = shuffle, drop_last, channels_last
        self.with_index = with_index  # yield (x, y, index): each example's position in the dataset
        self.seed = seed
        self.views = int(views)
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
            if self.views > 1:  # one whole-batch augmentation of all the copies
                xb = xb.repeat(self.views, 1, 1, 1)
            if a.active:
                xb = random_crop_flip(xb, a.crop_pad, a.flip, self.generator)
            xb = self.normalize(xb)
            if self.views > 1:  # (V*B, ...) -> (V, B, ...): a view, each slice keeps its strides
                xb = xb.view(self.views, len(yb), *xb.shape[1:])
            yield (xb, yb, idx) if self.with_index else (xb, yb)

    def state_dict(self) -> dict:
        """The generator state (a CPU uint8 tensor) and epoch count; take it between epochs."""
        return {"rng": self.generator.get_state(), "epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"].cpu())
        self.epoch = int(d["epoch"])
        self.seed = int(d["seed"])
