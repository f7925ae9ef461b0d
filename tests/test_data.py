"""Tests for cooplib.data: on-disk formats written here in miniature, batched augmentation
checked against per-image slicing, and the device loader's epoch / resume semantics."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cooplib import data
from cooplib.base.errors import CooplibError
from cooplib.data import (Augment, DatasetNotFoundError, DeviceLoader, ImageData, crop_batch,
                          random_crop_flip, sample_crop_flip)


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _images(n: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# Batched crop / flip
# ---------------------------------------------------------------------------------------

def test_crop_batch_equals_per_image_slicing_and_flip():
    x = torch.from_numpy(_images(16, 3, 10, 12))
    pad = 3
    g = _gen(1)
    oy = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    fl = torch.rand(16, generator=g) < 0.5
    out = crop_batch(x, pad, oy, ox, fl)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(16):
        ref = F.pad(x[i], (pad, pad, pad, pad))[:, oy[i]:oy[i] + 10, ox[i]:ox[i] + 12]
        if fl[i]:
            ref = torch.flip(ref, [-1])
        assert torch.equal(out[i], ref), i
    no_flip = crop_batch(x, pad, oy, ox)
    for i in range(16):
        ref = F.pad(x[i], (pad, pad, pad, pad))[:, oy[i]:oy[i] + 10, ox[i]:ox[i] + 12]
        assert torch.equal(no_flip[i], ref), i


def test_random_crop_flip_uses_sampled_params():
    x = torch.from_numpy(_images(32, 3, 8, 8))
    got = random_crop_flip(x, 2, True, _gen(5))
    oy, ox, fl = sample_crop_flip(32, 2, True, _gen(5))
    assert torch.equal(got, crop_batch(x, 2, oy, ox, fl))
    assert not torch.equal(got, x)
    assert random_crop_flip(x, 0, False, _gen(5)) is x


def test_padding_is_zero_in_uint8():
    x = torch.full((2, 1, 6, 6), 255, dtype=torch.uint8)
    out = crop_batch(x, 4, torch.tensor([0, 8]), torch.tensor([0, 8]))
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all()
    assert (out[0, :, 4:, 4:] == 255).all()
    assert (out[1, :, :2, :2] == 255).all() and (out[1, :, 2:, :] == 0).all()


def test_offsets_cover_range_and_flip_about_half():
    n, pad = 4000, 4
    oy, ox, fl = sample_crop_flip(n, pad, True, _gen(0))
    for o in (oy, ox):
        counts = torch.bincount(o, minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1 and (counts > n / 9 * 0.7).all()
    assert 0.45 < fl.float().mean() < 0.55
    # Flip only: every image is itself or its mirror, mirrored about half of the time.
    x = torch.arange(5, dtype=torch.uint8).repeat(n, 1, 3, 1)  # asymmetric rows
    out = random_crop_flip(x, 0, True, _gen(3))
    flipped = (out == torch.flip(x, [-1])).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped ^ same).all()
    assert 0.45 < flipped.float().mean() < 0.55


def test_normalisation_matches_totensor_normalize_and_padding_maps_to_minus_mean_over_std():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = torch.from_numpy(_images(4, 3, 8, 8))
    loader = DeviceLoader(x, torch.zeros(4, dtype=torch.long), 4, device="cpu",
                          mean=mean, std=std)
    xb, _ = next(iter(loader))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(xb, (x.float() / 255 - m) / s, atol=1e-5)
    padded = loader.normalize(crop_batch(x, 4, torch.zeros(4, dtype=torch.long),
                                         torch.zeros(4, dtype=torch.long)))
    assert torch.allclose(padded[:, :, :4, :], (-m / s).expand(4, 3, 4, 8), atol=1e-6)
    # Through the augmenting loader: every value is a real pixel or exactly the pad value.
    ones = torch.full((64, 3, 8, 8), 255, dtype=torch.uint8)
    aug = DeviceLoader(ones, torch.zeros(64, dtype=torch.long), 64, device="cpu", mean=mean,
                       std=std, augment=Augment(4, True), shuffle=True)
    xb, _ = next(iter(aug))
    is_pad = torch.isclose(xb, (-m / s).expand_as(xb), atol=1e-5)
    is_one = torch.isclose(xb, ((1 - m) / s).expand_as(xb), atol=1e-5)
    assert (is_pad | is_one).all() and is_pad.any() and is_one.any()


# ---------------------------------------------------------------------------------------
# DeviceLoader
# ---------------------------------------------------------------------------------------

def _loader(n: int = 103, bs: int = 10, seed: int = 0, **kw) -> DeviceLoader:
    x = torch.from_numpy(_images(n, 3, 8, 8))
    return DeviceLoader(x, torch.arange(n), bs, device="cpu", mean=(0.5,) * 3,
                        std=(0.25,) * 3, seed=seed, **kw)


def test_loader_shapes_dtypes_len():
    loader = _loader(augment=Augment(2, True), shuffle=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 11
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 8, 8)
        assert yb.dtype == torch.int64 and xb.device.type == "cpu"
    dropped = _loader(drop_last=True)
    assert len(dropped) == len(list(dropped)) == 10
    cl = _loader(channels_last=True, augment=Augment(2, True))
    xb, _ = next(iter(cl))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    xb, _ = next(iter(_loader(augment=Augment(2, True))))
    assert xb.is_contiguous()


def test_loader_without_shuffle_keeps_order():
    ys = torch.cat([y for _, y in _loader()])
    assert torch.equal(ys, torch.arange(103))


def test_loader_epoch_is_a_permutation_and_differs_between_epochs():
    loader = _loader(shuffle=True, augment=Augment(4, True))
    e1 = torch.cat([y for _, y in loader])
    e2 = torch.cat([y for _, y in loader])
    assert torch.equal(torch.sort(e1).values, torch.arange(103))
    assert torch.equal(torch.sort(e2).values, torch.arange(103))
    assert not torch.equal(e1, e2) and not torch.equal(e1, torch.arange(103))


def test_loader_same_seed_same_batches():
    a = list(_loader(seed=7, shuffle=True, augment=Augment(4, True)))
    b = list(_loader(seed=7, shuffle=True, augment=Augment(4, True)))
    c = list(_loader(seed=8, shuffle=True, augment=Augment(4, True)))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_loader_state_dict_resumes_identically(tmp_path):
    a = _loader(seed=3, shuffle=True, augment=Augment(4, True))
    list(a)
    torch.save(a.state_dict(), tmp_path / "state.pt")
    next_epoch = list(a)
    fresh = _loader(seed=99, shuffle=True, augment=Augment(4, True))
    unrestored = list(_loader(seed=3, shuffle=True, augment=Augment(4, True)))
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    resumed = list(fresh)
    assert fresh.epoch == 2
    for (xa, ya), (xb, yb) in zip(next_epoch, resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(next_epoch, unrestored))


def test_loader_validates_inputs():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(x.float(), torch.zeros(4), 2, device="cpu", mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="channels"):
        DeviceLoader(x, torch.zeros(4), 2, device="cpu", mean=(0,), std=(1,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda_makes_no_host_sync():
    loader = DeviceLoader(torch.from_numpy(_images(300, 3, 8, 8)), torch.arange(300), 64,
                          device="cuda", mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True,
                          augment=Augment(4, True))
    list(loader)  # warm up lazy CUDA init outside the checked region
    torch.cuda.set_sync_debug_mode("error")
    try:
        ys = [y for _, y in loader]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(torch.sort(torch.cat(ys)).values.cpu(), torch.arange(300))
    state = loader.state_dict()
    again = list(loader)
    loader.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, loader))


# ---------------------------------------------------------------------------------------
# Registry, errors, subset
# ---------------------------------------------------------------------------------------

def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match="did you mean 'cifar100'") as e:
        data.load("cifar-100")
    assert "svhn" in str(e.value)
    with pytest.raises(ValueError, match="no option"):
        data.load("digits", test_fracton=0.3)
    assert set(data.names()) == {"cifar10", "cifar100", "svhn", "tinyimagenet",
                                 "fashion-mnist", "digits", "npz", "folder"}


def test_default_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COOPLIB_DATA", str(tmp_path))
    assert data.default_root() == tmp_path
    monkeypatch.delenv("COOPLIB_DATA")
    assert data.default_root() == Path.home() / ".cache" / "cooplib" / "data"


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz"),
    ("svhn", "train_32x32.mat"), ("tinyimagenet", "tiny-imagenet-200.zip"),
    ("fashion-mnist", "train-images-idx3-ubyte.gz")])
def test_missing_dataset_offline(name, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(data.fashion_mnist, "SYSTEM_FOLDERS", [])
    with pytest.raises(DatasetNotFoundError) as e:
        data.load(name, root=tmp_path)
    assert expected in str(e.value) and str(tmp_path) in str(e.value)
    assert "http" in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, CooplibError)


def test_download_failure_becomes_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise URLError("no network")
    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError, match="download failed.*no network"):
        data.load("cifar10", root=tmp_path, download=True)


def test_download_path_calls_torchvision_then_reads(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    calls = []

    def fake_cifar100(root, train, download):
        calls.append((root, download))
        _write_cifar100(Path(root))
    monkeypatch.setattr(tvd, "CIFAR100", fake_cifar100)
    d = data.load("cifar100", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True)] and d.num_classes == 100


def _toy(n_per_class: list[int], n_test: int = 5) -> ImageData:
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(n_per_class)])
    yt = torch.arange(n_test * len(n_per_class)) % len(n_per_class)
    return ImageData("toy", torch.zeros(len(y), 1, 4, 4, dtype=torch.uint8), y,
                     torch.zeros(len(yt), 1, 4, 4, dtype=torch.uint8), yt,
                     [str(i) for i in range(len(n_per_class))], (0.0,), (1.0,))


def test_subset_is_stratified_and_deterministic():
    d = _toy([30] * 10)
    s = d.subset(100, 20, seed=1)
    assert torch.bincount(s.y_train).tolist() == [10] * 10
    assert torch.bincount(s.y_test).tolist() == [2] * 10
    assert torch.equal(d.subset(100, 20, seed=1).y_train, s.y_train)
    assert len(d.subset(100, None, seed=2).y_test) == 50
    full = d.subset(None, None)
    assert torch.equal(full.y_train, d.y_train)
    imbalanced = _toy([60, 30, 10]).subset(50, None)
    assert torch.bincount(imbalanced.y_train).tolist() == [30, 15, 5]
    with pytest.raises(ValueError, match="only 300"):
        d.subset(301, None)


def test_subset_picks_different_samples_for_different_seeds():
    d = _toy([30] * 4)
    d.x_train = torch.arange(120, dtype=torch.uint8).view(120, 1, 1, 1).expand(120, 1, 4, 4)
    a, b = d.subset(20, None, seed=0), d.subset(20, None, seed=1)
    assert torch.equal(a.x_train, d.subset(20, None, seed=0).x_train)
    assert not torch.equal(a.x_train, b.x_train)
    # each chosen sample keeps its own label
    assert torch.equal(a.x_train[:, 0, 0, 0].long() // 30, a.y_train)


# ---------------------------------------------------------------------------------------
# On-disk formats
# ---------------------------------------------------------------------------------------

def _write_cifar10(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _images(3, seed=i).reshape(3, -1), [(i + j) % 10 for j in range(3)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"batch {i}", "data": x, "labels": y}, f)
        xs.append(x)
        ys += y
    xt, yt = _images(4, seed=9).reshape(4, -1), [9, 8, 7, 6]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": xt, "labels": yt}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f)
    return np.concatenate(xs), ys, xt, yt


def _write_cifar100(root: Path) -> tuple[np.ndarray, list[int]]:
    """Bytes keys, as Python 2 pickles read with encoding='bytes' look."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = _images(6, seed=11).reshape(6, -1), [0, 99, 5, 42, 7, 1]
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": y, b"coarse_labels": [0] * 6}, f,
                        protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}" for i in range(100)],
                     b"coarse_label_names": [f"k{i}" for i in range(20)]}, f, protocol=2)
    return x, y


def test_cifar10_pickles_round_trip(tmp_path):
    x, y, xt, yt = _write_cifar10(tmp_path)
    d = data.load("cifar10", root=tmp_path)
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert np.array_equal(d.x_train.numpy().reshape(15, -1), x)
    assert np.array_equal(d.x_train[0].numpy(), x[0].reshape(3, 32, 32))
    assert d.y_train.tolist() == y and d.y_test.tolist() == yt
    assert np.array_equal(d.x_test.numpy().reshape(4, -1), xt)
    assert d.classes == [f"c{i}" for i in range(10)] and d.num_classes == 10
    assert d.augment == Augment(4, True) and d.image_size == (32, 32) and d.in_channels == 3
    assert d.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_pickles_round_trip(tmp_path):
    x, y = _write_cifar100(tmp_path)
    d = data.load("cifar100", root=tmp_path)
    assert np.array_equal(d.x_train.numpy().reshape(6, -1), x)
    assert d.y_train.tolist() == y and d.y_test.tolist() == y
    assert d.classes[99] == "f99" and d.num_classes == 100


def test_svhn_mat_round_trip(tmp_path):
    import scipy.io
    folder = tmp_path / "svhn"
    folder.mkdir()
    imgs = {s: _images(n, seed=n) for s, n in (("train", 5), ("test", 3), ("extra", 2))}
    labels = {"train": [10, 1, 2, 3, 9], "test": [10, 5, 6], "extra": [4, 10]}
    for s in imgs:
        scipy.io.savemat(folder / f"{s}_32x32.mat",
                         {"X": imgs[s].transpose(2, 3, 1, 0),  # (H, W, C, N)
                          "y": np.array(labels[s], dtype=np.uint8).reshape(-1, 1)})
    d = data.load("svhn", root=tmp_path)
    assert np.array_equal(d.x_train.numpy(), imgs["train"])
    assert np.array_equal(d.x_test.numpy(), imgs["test"])
    assert d.y_train.tolist() == [0, 1, 2, 3, 9] and d.y_test.tolist() == [0, 5, 6]
    assert d.augment == Augment.none()
    e = data.load("svhn", root=tmp_path, extra=True)
    assert len(e.y_train) == 7 and e.y_train[5:].tolist() == [4, 0]
    assert np.array_equal(e.x_train[5:].numpy(), imgs["extra"])
    (folder / "extra_32x32.mat").unlink()
    with pytest.raises(DatasetNotFoundError, match="extra_32x32.mat"):
        data.load("svhn", root=tmp_path, extra=True)


def _write_tiny(root: Path) -> dict[str, int]:
    from PIL import Image
    folder = root / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # not sorted on purpose: labels follow sorted wnids
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\n")
    colour = {"n01": (200, 30, 30), "n02": (20, 180, 60)}
    for w in wnids:
        (folder / "train" / w / "images").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), colour[w]).save(folder / "train" / w / "images" /
                                                       f"{w}_{i}.JPEG")
    Image.new("L", (64, 64), 128).save(folder / "train" / "n01" / "images" / "n01_2.JPEG")
    lines = []
    for i, w in enumerate(["n02", "n01", "n01"]):
        Image.new("RGB", (64, 64), colour[w]).save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {"n01": 0, "n02": 1}


def test_tinyimagenet_folder_round_trip_and_cache(tmp_path):
    _write_tiny(tmp_path)
    d = data.load("tinyimagenet", root=tmp_path)
    assert d.x_train.shape == (5, 3, 64, 64) and d.x_test.shape == (3, 3, 64, 64)
    assert d.y_train.tolist() == [0, 0, 0, 1, 1] and d.y_test.tolist() == [1, 0, 0]
    assert d.classes == ["goldfish", "salamander"]
    means = d.x_train.float().mean((2, 3))
    assert torch.allclose(means[0], torch.tensor([200.0, 30, 30]), atol=4)
    assert torch.allclose(means[2], torch.tensor([128.0] * 3), atol=4)  # gray -> RGB
    assert torch.allclose(means[3], torch.tensor([20.0, 180, 60]), atol=4)
    assert d.augment == Augment(8, True)
    cache = tmp_path / "tinyimagenet-cooplib-v1.npz"
    assert cache.exists()
    import shutil
    shutil.rmtree(tmp_path / "tiny-imagenet-200")  # the second load must come from the cache
    again = data.load("tinyimagenet", root=tmp_path)
    assert torch.equal(again.x_train, d.x_train) and again.classes == d.classes
    assert torch.equal(again.y_test, d.y_test)


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def test_fashion_mnist_idx_round_trip(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    ytr, yte = np.array([0, 1, 2, 3, 4, 5, 9]), np.array([9, 8, 7])
    _write_idx(folder / "train-images-idx3-ubyte", xtr)
    _write_idx(folder / "train-labels-idx1-ubyte", ytr)
    _write_idx(folder / "t10k-images-idx3-ubyte", xte, gz=False)  # raw files work too
    _write_idx(folder / "t10k-labels-idx1-ubyte", yte, gz=False)
    d = data.load("fashion-mnist", root=tmp_path)
    assert d.x_train.shape == (7, 1, 28, 28)
    assert np.array_equal(d.x_train[:, 0].numpy(), xtr) and np.array_equal(d.x_test[:, 0], xte)
    assert d.y_train.tolist() == ytr.tolist() and d.y_test.tolist() == yte.tolist()
    assert d.classes[9] == "Ankle boot" and d.augment == Augment(2, True)
    assert d.mean[0] == pytest.approx(xtr.mean() / 255, abs=1e-5)
    assert d.std[0] == pytest.approx(xtr.std() / 255, abs=1e-5)


def test_corrupt_idx_is_a_clear_error(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x1f\x8b\x08\x00junk")
    with pytest.raises(ValueError, match="magic number"):
        data.read_idx(bad)
    _write_idx(tmp_path / "short", np.zeros((2, 3, 3)), gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "short")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian_package(tmp_path):
    d = data.load("fashion-mnist", root=tmp_path)
    assert len(d.y_train) == 60000 and len(d.y_test) == 10000
    assert d.y_train[0] == 9 and torch.bincount(d.y_test).tolist() == [1000] * 10


def test_npz_layouts(tmp_path):
    nchw = _images(6, 3, 20, 20)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "a.npz", x_train=nchw, y_train=y, x_test=nchw[:2], y_test=y[:2],
             classes=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "b.npz", x_train=nchw.transpose(0, 2, 3, 1), y_train=y,
             x_test=nchw[:2].transpose(0, 2, 3, 1), y_test=y[:2])
    a = data.load("npz", path=tmp_path / "a.npz")
    b = data.load("npz", root=tmp_path, path="b.npz")  # relative: found in root
    for d in (a, b):
        assert np.array_equal(d.x_train.numpy(), nchw) and d.y_train.tolist() == y.tolist()
        assert d.augment == Augment(4, True)
    assert a.classes == ["a", "b", "c"] and b.classes == ["0", "1", "2"]
    gray = _images(4, 1, 8, 8)[:, 0]
    np.savez(tmp_path / "c.npz", x_train=gray, y_train=y[:4], x_test=gray, y_test=y[:4])
    c = data.load("npz", path=tmp_path / "c.npz")
    assert c.x_train.shape == (4, 1, 8, 8) and np.array_equal(c.x_train[:, 0].numpy(), gray)
    assert c.augment == Augment.none()


def test_npz_errors(tmp_path):
    x = _images(2, 3, 8, 8)
    np.savez(tmp_path / "nokey.npz", x_train=x, y_train=[0, 1], x_test=x)
    with pytest.raises(ValueError, match="y_test"):
        data.load("npz", path=tmp_path / "nokey.npz")
    np.savez(tmp_path / "float.npz", x_train=x / 255.0, y_train=[0, 1], x_test=x, y_test=[0, 1])
    with pytest.raises(ValueError, match="uint8"):
        data.load("npz", path=tmp_path / "float.npz")
    with pytest.raises(DatasetNotFoundError, match="nothere.npz"):
        data.load("npz", root=tmp_path, path="nothere.npz")


def test_digits_offline_fixed_split():
    d = data.load("digits")
    assert len(d.y_train) + len(d.y_test) == 1797 and d.num_classes == 10
    assert d.x_train.dtype == torch.uint8 and d.x_train.shape[1:] == (1, 8, 8)
    assert int(d.x_train.max()) == 255 and int(d.x_train.min()) == 0
    assert len(d.y_test) == 359
    counts = torch.bincount(d.y_test)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    again = data.load("digits")
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)
    from sklearn.datasets import load_digits
    ref = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    all_x = np.concatenate([d.x_train[:, 0].numpy(), d.x_test[:, 0].numpy()])
    assert sorted(map(bytes, all_x)) == sorted(map(bytes, ref))
    assert d.augment == Augment(1, False)


def test_imagedata_validates():
    with pytest.raises(ValueError, match="labels outside"):
        ImageData("bad", torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 3]),
                  torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.tensor([0]),
                  ["a", "b"], (0.0,), (1.0,))


def test_augment_by_name_is_relative_to_the_dataset_default():
    from cooplib.data import Augment

    cifar, svhn = Augment(crop_pad=4, flip=True), Augment.none()
    assert cifar.named("default") is cifar and svhn.named("default") is svhn
    assert cifar.named("crop") == Augment(crop_pad=4, flip=False) and svhn.named("crop") == Augment(crop_pad=4, flip=False)
    assert Augment(crop_pad=2, flip=False).named("crop+flip") == Augment(crop_pad=2, flip=True)
    assert not cifar.named("none").active and cifar.named("flip") == Augment(crop_pad=0, flip=True)
