"""Several augmented views per batch: one view is the old stream, V views share images and labels."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cooplib.data import Augment, DeviceLoader
from cooplib.data.loader import crop_batch, random_crop_flip, sample_crop_flip
from cooplib.engine import distributed, train
from cooplib.engine.config import RunConfig
from cooplib.methods.base import Learner, split_views

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def images(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 5


def loader(views=1, seed=7, channels_last=False, augment=Augment(crop_pad=2, flip=True)):
    x, y = images()
    return DeviceLoader(x, y, 16, device="cpu", mean=MEAN, std=STD, augment=augment, shuffle=True, seed=seed,
                        channels_last=channels_last, views=views)


def normalize(xb):
    m = torch.tensor(MEAN).view(1, -1, 1, 1)
    s = torch.tensor(STD).view(1, -1, 1, 1)
    return (xb.float() / 255 - m) / s


def old_batches(x, y, seed, epochs, pad=2, flip=True, bs=16):
    """The single-view loader as it was before views existed, restated: one randperm per
    epoch, then per batch one whole-batch crop + flip from the same generator."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(-(-len(y) // bs)):
            idx = order[i * bs:(i + 1) * bs]
            out.append((random_crop_flip(x[idx], pad, flip, g), y[idx]))
    return out, g.get_state()


def test_one_view_is_the_stream_it_always_was():
    x, y = images()
    ld = loader(views=1)
    got = [b for _ in range(2) for b in ld]
    want, state = old_batches(x, y, seed=7, epochs=2)
    assert len(got) == len(want) == 6
    for (xb, yb), (wx, wy) in zip(got, want):
        assert xb.shape == (len(wy), 3, 8, 8)
        assert torch.equal(yb, wy)
        torch.testing.assert_close(xb, normalize(wx), rtol=1e-6, atol=1e-6)
    assert torch.equal(ld.generator.get_state(), state)  # the same draws, no more, no fewer
    # and bit-identical to a loader built without the argument (the default)
    x2, y2 = images()
    plain = DeviceLoader(x2, y2, 16, device="cpu", mean=MEAN, std=STD, augment=Augment(crop_pad=2, flip=True),
                         shuffle=True, seed=7)
    for (a, ya), (b, yb) in zip([b for _ in range(2) for b in plain], got):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_views_are_independent_augmentations_of_the_same_images():
    x, y = images()
    v = 3
    ld = loader(views=v)
    g = torch.Generator().manual_seed(7)
    order = torch.randperm(len(y), generator=g)
    for i, (xb, yb) in enumerate(ld):
        idx = order[i * 16:(i + 1) * 16]
        b = len(idx)
        assert xb.shape == (v, b, 3, 8, 8) and yb.shape == (b,)
        assert torch.equal(yb, y[idx])  # labels once, the same images in every view
        oy, ox, fl = sample_crop_flip(v * b, 2, True, g)  # one draw for all views
        for k in range(v):
            s = slice(k * b, (k + 1) * b)
            want = crop_batch(x[idx], 2, oy[s], ox[s], fl[s])
            torch.testing.assert_close(xb[k], normalize(want), rtol=1e-6, atol=1e-6)
        for j in range(v):
            for k in range(j + 1, v):
                assert not torch.equal(xb[j], xb[k]), "views must be augmented independently"


def test_views_without_augmentation_are_copies():
    xb, yb = next(iter(loader(views=2, augment=Augment.none())))
    assert torch.equal(xb[0], xb[1])


def test_views_are_seeded_and_resume_exactly():
    a, b = loader(views=2, seed=3), loader(views=2, seed=3)
    first_a = [xb for xb, _ in a]
    assert all(torch.equal(p, q) for p, q in zip(first_a, [xb for xb, _ in b]))
    state = a.state_dict()
    c = loader(views=2, seed=99)
    c.load_state_dict(state)
    for (p, yp), (q, yq) in zip(a, c):
        assert torch.equal(p, q) and torch.equal(yp, yq)
    assert not torch.equal(first_a[0], next(iter(loader(views=2, seed=4)))[0])


def test_each_view_keeps_the_channels_last_layout():
    xb, _ = next(iter(loader(views=2, channels_last=True)))
    for k in range(2):
        assert xb[k].is_contiguous(memory_format=torch.channels_last)


def test_bad_views_are_refused():
    with pytest.raises(ValueError, match="views"):
        loader(views=0)
    with pytest.raises(ValueError, match="views"):
        split_views(torch.zeros(3, 2, 3, 8, 8), 2)


def test_split_views():
    x4 = torch.randn(2, 3, 4, 4)
    assert all(v is x4 for v in split_views(x4, 3))
    x5 = torch.randn(3, 2, 3, 4, 4)
    assert all(torch.equal(v, x5[k]) for k, v in enumerate(split_views(x5, 3)))


def test_shard_slices_every_view(monkeypatch):
    x = torch.arange(2 * 5).view(2, 5, 1, 1, 1)
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    assert torch.equal(distributed.shard(x, dim=1), x[:, 3:])
    assert torch.equal(distributed.shard(torch.arange(5)), torch.arange(3, 5))


class Recorder(Learner):
    """Logs the input shapes it is trained and evaluated on, and every after_step call."""

    views = 2

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(3 * 8 * 8, 4)
        self.shapes, self.steps = [], []

    def forward(self, x):
        self.shapes.append((self.training, tuple(x.shape)))
        xs = split_views(x, self.views)
        return {"net": self.w(xs[0].flatten(1)), "other": self.w(xs[1].flatten(1))}

    def loss(self, heads, y, state):
        total = nn.functional.cross_entropy(heads["net"], y) + nn.functional.cross_entropy(heads["other"], y)
        return total, {"ce": total}

    def after_step(self, state):
        self.steps.append((state.epoch, state.step))


def test_the_loop_hands_a_learner_its_views(tiny_data, tmp_path):
    cfg = RunConfig(model="resnet8", dataset="quadrants", epochs=2, batch_size=32, lr=0.05, milestones=[], progress=False,
                    tensorboard=False, device="cpu")
    learner = Recorder()
    res = train.fit(learner, tiny_data, cfg, tmp_path / "run")
    trained = {s for t, s in learner.shapes if t}
    evaluated = {s for t, s in learner.shapes if not t}
    assert trained == {(2, 32, 3, 8, 8)}  # 96 images, batches of 32, two views each
    assert all(len(s) == 4 for s in evaluated)
    assert learner.steps == [(e, s) for e in range(2) for s in range(3)]
    assert {"test/net/top1", "test/other/top1"} <= set(res.final["last"])
