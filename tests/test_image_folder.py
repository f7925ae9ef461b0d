"""The `folder` dataset: real PNG/JPEG files in ImageFolder layout, written here with PIL,
read back exactly (PNG) or as PIL decodes them (JPEG), cached, and trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cooplib import data
from cooplib.engine.config import RunConfig
from cooplib.data import Augment, DatasetNotFoundError
from cooplib.base.errors import ConfigError

CLASSES = ["cat", "ant", "bee"]  # written unsorted; labels follow the sorted names


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    """The cache goes to a fresh folder, never to the user's ~/.cache."""
    root = tmp_path / "data-root"
    monkeypatch.setenv("COOPLIB_DATA", str(root))
    return root


def _save(path: Path, a: np.ndarray, **kw) -> None:
    """Write an (H, W) or (H, W, C) uint8 array as an image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(path, **kw)


def _build(root: Path, ext: str = ".png", c: int = 3, hw: int = 12, n_train: int = 4, n_test: int = 2,
           seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """3 classes, n_train + n_test images each; returns what a reader must give back per
    split: (N, C, H, W) pixels in sorted-class, sorted-file order, and labels."""
    rng = np.random.default_rng(seed)
    want = {}
    for split, n in (("train", n_train), ("test", n_test)):
        xs, ys = [], []
        for label, cls in enumerate(sorted(CLASSES)):
            for i in range(n):
                if ext == ".jpg":  # smooth: JPEG keeps it closely (noise it does not)
                    ramp = np.linspace(0, 60, hw)
                    a = (rng.integers(30, 160, c) + ramp[:, None, None] + ramp[None, :, None] / 2).astype(np.uint8)
                else:
                    a = rng.integers(0, 256, (hw, hw, c), dtype=np.uint8)
                _save(root / split / cls / f"img{i}{ext}", a, **({"quality": 95} if ext == ".jpg" else {}))
                xs.append(a.transpose(2, 0, 1))
                ys.append(label)
        want[split] = (np.stack(xs), np.array(ys))
    return want


def _pil_decoded(root: Path, split: str) -> np.ndarray:
    """What PIL itself decodes, in the reader's order (JPEG is lossy: compare with this)."""
    files = sorted((root / split).glob("*/*"))
    return np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in files])


def _numpy_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(x.shape[1], -1) / 255
    return v.mean(1), v.std(1)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [3, 1])
def test_png_folder_is_read_exactly_with_sorted_labels_and_its_own_stats(tmp_path, c):
    root = tmp_path / "myset"
    want = _build(root, c=c)
    d = data.load("folder", path=root)
    assert d.name == "myset" and d.classes == ["ant", "bee", "cat"]
    for split in ("train", "test"):
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert tuple(x.shape) == want[split][0].shape == ((12 if split == "train" else 6), c, 12, 12)
        assert np.array_equal(x.numpy(), want[split][0]) and y.tolist() == want[split][1].tolist()
    mean, std = _numpy_stats(want["train"][0])
    assert np.allclose(d.mean, mean, atol=1e-6) and np.allclose(d.std, std, atol=1e-6)
    assert d.augment == Augment(crop_pad=1, flip=True)  # 12 px // 8


def test_jpeg_folder_matches_pil_and_the_written_pixels_closely(tmp_path):
    root = tmp_path / "jpegs"
    want = _build(root, ext=".jpg", hw=16)
    d = data.load("folder", path=str(root))
    for split in ("train", "test"):
        x = getattr(d, f"x_{split}").numpy()
        assert np.array_equal(x, _pil_decoded(root, split))
        assert x.shape == want[split][0].shape
    diff = np.abs(d.x_train.numpy().astype(np.int16) - want["train"][0].astype(np.int16))
    assert 0 < diff.mean() < 3 and diff.max() < 20  # lossy, but the written images
    mean, std = _numpy_stats(d.x_train.numpy())
    assert np.allclose(d.mean, mean, atol=1e-6) and np.allclose(d.std, std, atol=1e-6)

def test_extensions_any_case_hidden_and_other_files_skipped_nested_folders_read(tmp_path):
    root = tmp_path / "mixed"
    want = _build(root)
    odd = np.full((5, 7, 3), 9, dtype=np.uint8)  # another size: would fail if read
    _save(root / "train" / "ant" / ".hidden.png", odd)
    _save(root / "train" / ".ipynb_checkpoints" / "x.png", odd)
    _save(root / "train" / "ant" / ".ipynb_checkpoints" / "img0-checkpoint.png", odd)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "test" / ".DS_Store").write_bytes(b"\0\1")
    extra = np.random.default_rng(5).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    _save(root / "train" / "bee" / "deeper" / "z.PNG", extra)  # upper case, a sub-folder
    d = data.load("folder", path=root)
    assert d.classes == ["ant", "bee", "cat"] and len(d.y_train) == 13
    i = int(np.flatnonzero(d.y_train.numpy() == 1)[0])  # bee: deeper/z.PNG sorts first
    assert np.array_equal(d.x_train[i].numpy(), extra.transpose(2, 0, 1))
    assert np.array_equal(np.delete(d.x_train.numpy(), i, 0), want["train"][0])


def test_relative_path_is_looked_up_in_root_and_val_can_be_the_test_split(tmp_path, data_root):
    want = _build(data_root / "rel")
    assert np.array_equal(data.load("folder", path="rel").x_test.numpy(), want["test"][0])
    (data_root / "rel" / "test").rename(data_root / "rel" / "val")
    with pytest.raises(DatasetNotFoundError, match="test_folder='val'"):
        data.load("folder", path="rel")
    d = data.load("folder", path="rel", test_folder="val")
    assert np.array_equal(d.x_test.numpy(), want["test"][0])


def test_size_and_channels_options_resize_and_convert(tmp_path):
    root = tmp_path / "sizes"
    _build(root, hw=12)
    big = np.random.default_rng(1).integers(0, 256, (20, 16), dtype=np.uint8)  # grayscale, 16 wide
    _save(root / "train" / "ant" / "zbig.png", big)
    with pytest.raises(ConfigError, match=r"zbig.png is 16x20 pixels \(width x height\) with 1 channel\(s\) but .*img0.png is 12x12 with 3.*size=N.*channels=3"):
        data.load("folder", path=root)
    with pytest.raises(ConfigError, match=r"zbig.png is 12x12 .* with 1 channel\(s\) but .*img0.png is 12x12 with 3.*; pass channels=3"):
        data.load("folder", path=root, size=12)
    d = data.load("folder", path=root, size=8, channels=3)
    assert d.x_train.shape == (13, 3, 8, 8) and d.x_test.shape == (6, 3, 8, 8)
    assert d.augment == Augment(crop_pad=1, flip=True)
    ref = np.asarray(Image.fromarray(big).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR))
    assert np.array_equal(d.x_train[4].numpy(), ref.transpose(2, 0, 1))  # ant/zbig.png: after img0..3
    gray = data.load("folder", path=root, size=12, channels=1)
    assert gray.x_train.shape == (13, 1, 12, 12) and len(gray.mean) == 1
    mean, std = _numpy_stats(gray.x_train.numpy())
    assert np.allclose(gray.mean, mean, atol=1e-6) and np.allclose(gray.std, std, atol=1e-6)
    assert data.load("folder", path=root, size=32, channels=1).augment == Augment(crop_pad=4, flip=True)


def test_rgba_keeps_four_channels_and_palette_images_read_as_rgb(tmp_path):
    rgba = _build(tmp_path / "rgba", c=4)
    d = data.load("folder", path=tmp_path / "rgba")
    assert d.in_channels == 4 and np.array_equal(d.x_train.numpy(), rgba["train"][0])
    assert np.array_equal(data.load("folder", path=tmp_path / "rgba", channels=3).x_train.numpy(),
                          rgba["train"][0][:, :3])
    rgb = _build(tmp_path / "pal")
    for p in (tmp_path / "pal").rglob("*.png"):
        Image.open(p).quantize(16).save(p)  # mode P
    d = data.load("folder", path=tmp_path / "pal")
    assert d.in_channels == 3 and np.array_equal(d.x_train.numpy(), _pil_decoded(tmp_path / "pal", "train"))
    assert d.x_train.shape == rgb["train"][0].shape


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------

def test_second_load_reads_the_cache_and_a_changed_folder_is_read_again(tmp_path, data_root, monkeypatch):
    root = tmp_path / "cached"
    want = _build(root)
    first = data.load("folder", path=root)
    caches = list((data_root / "folder-cache").glob("cached-*.npz"))
    assert len(caches) == 1 and not list((data_root / "folder-cache").glob("*.tmp"))

    real_open = Image.open

    def refuse(*a, **k):
        raise AssertionError("an image was opened")
    monkeypatch.setattr(Image, "open", refuse)
    again = data.load("folder", path=root)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(again, k), getattr(first, k))
    assert again.mean == first.mean and again.std == first.std and again.classes == first.classes
    assert data.fingerprint(again) == data.fingerprint(first)

    p = root / "train" / "bee" / "img1.png"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))  # touched: read again
    with pytest.raises(AssertionError, match="an image was opened"):
        data.load("folder", path=root)
    monkeypatch.setattr(Image, "open", real_open)
    assert torch.equal(data.load("folder", path=root).x_train, first.x_train)

    changed = want["train"][0][5].transpose(1, 2, 0).copy()
    changed[0, 0] ^= 255
    _save(p, changed)  # same name, other pixels
    now = data.load("folder", path=root)
    assert np.array_equal(now.x_train[5].numpy(), changed.transpose(2, 0, 1))
    assert data.fingerprint(now) != data.fingerprint(first)
    _save(root / "test" / "ant" / "new.png", changed)  # added
    assert len(data.load("folder", path=root).y_test) == 7
    assert len(list((data_root / "folder-cache").glob("cached-*.npz"))) == 1  # one file per folder, replaced
    # other options, another cache file; cache=False neither reads nor writes one
    data.load("folder", path=root, size=6)
    assert len(list((data_root / "folder-cache").glob("cached-*.npz"))) == 2
    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(AssertionError, match="an image was opened"):
        data.load("folder", path=root, cache=False)


def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path, data_root):
    root = tmp_path / "damaged"
    want = _build(root)
    data.load("folder", path=root)
    cache, = (data_root / "folder-cache").glob("damaged-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable image-folder cache"):
        d = data.load("folder", path=root)
    assert np.array_equal(d.x_train.numpy(), want["train"][0])
    assert np.load(cache)["x_train"].shape == want["train"][0].shape
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a data root that cannot hold a cache folder: read, with a warning
    with pytest.warns(UserWarning, match="could not write the image-folder cache"):
        d = data.load("folder", path=root, root=blocked)
    assert np.array_equal(d.x_test.numpy(), want["test"][0]) and blocked.is_file()


# ---------------------------------------------------------------------------------------
# Bad input: one clear error each
# ---------------------------------------------------------------------------------------

def test_missing_path_folders_and_class_mismatch(tmp_path):
    with pytest.raises(ConfigError, match="needs path="):
        data.load("folder")
    with pytest.raises(ConfigError, match="needs path="):
        RunConfig(dataset="folder")
    with pytest.raises(ConfigError, match="channels must be one of"):
        RunConfig(dataset="folder", dataset_args={"path": "x", "channels": 2})
    with pytest.raises(ConfigError, match="size must be an integer >= 1"):
        data.load("folder", path=tmp_path, size=0)
    with pytest.raises(DatasetNotFoundError, match=r"nothere not found"):
        data.load("folder", path=tmp_path / "nothere")
    root = tmp_path / "set"
    _build(root)
    (root / "train").rename(root / "training")
    with pytest.raises(DatasetNotFoundError, match=r"has no train/ folder.*it holds test/, training/"):
        data.load("folder", path=root)
    (root / "training").rename(root / "train")
    (root / "test" / "cat").rename(root / "test" / "kat")
    with pytest.raises(ConfigError, match=r"same class folders; only in train/: \['cat'\], only in test/: \['kat'\]"):
        data.load("folder", path=root)


def test_empty_class_no_class_folders_and_no_images(tmp_path):
    root = tmp_path / "set"
    _build(root)
    for p in (root / "test" / "bee").iterdir():
        p.unlink()
    (root / "test" / "bee" / "readme.md").write_text("todo")
    with pytest.raises(ConfigError, match=r"class 'bee' has no images in .*test/bee \(skipped files of other types: \.md\)"):
        data.load("folder", path=root)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    _save(empty / "train" / "loose.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetNotFoundError, match=r"has no class folders \(1 loose files\)"):
        data.load("folder", path=empty)
    for split in ("train", "test"):
        (empty / split / "a").mkdir()
    with pytest.raises(ConfigError, match="class 'a' has no images"):
        data.load("folder", path=empty)


def test_unreadable_sixteen_bit_and_constant_images(tmp_path):
    root = tmp_path / "set"
    _build(root)
    bad = root / "test" / "cat" / "img1.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ConfigError, match=r"cannot read image .*img1.png.*remove or replace"):
        data.load("folder", path=root)
    Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(bad)
    assert Image.open(bad).mode.startswith("I")
    with pytest.raises(ConfigError, match=r"img1.png has mode I.*8 bits per channel"):
        data.load("folder", path=root)
    flat = tmp_path / "flat"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _save(flat / split / cls / "x.png", np.full((4, 4), 7, np.uint8))
    with pytest.raises(ValueError, match="constant"):
        data.load("folder", path=flat)


# ---------------------------------------------------------------------------------------
# A run trained from an image folder
# ---------------------------------------------------------------------------------------

def test_a_run_trains_from_an_image_folder_and_records_it(tmp_path):
    root = tmp_path / "pets"
    _build(root, hw=8, n_train=4, n_test=2)
    config = RunConfig(dataset="folder", dataset_args={"path": str(root)}, model="resnet8", epochs=1,
                       batch_size=4, schedule="constant", device="cpu", progress=False, tensorboard=False, seed=0)
    from cooplib.engine import experiment

    res = experiment.run(config, tmp_path / "runs")
    assert res.run_dir.name.startswith("baseline-resnet8-folder-s0-")
    assert len(res.metrics) == 1 and res.metrics[0]["epoch"] == 1
    meta = json.loads((res.run_dir / "config.json").read_text())
    d = data.load("folder", path=root)
    assert meta["config"]["dataset"] == "folder" and meta["config"]["dataset_args"] == {"path": str(root)}
    assert meta["data"]["name"] == "pets" and meta["data"]["num_classes"] == 3
    assert meta["data"]["in_channels"] == 3 and meta["data"]["image_size"] == [8, 8]
    assert meta["data"]["mean"] == list(d.mean) and meta["data"]["std"] == list(d.std)
    assert meta["data"]["fingerprint"] == data.fingerprint(d)
    assert experiment.run(config, tmp_path / "runs").run_dir == res.run_dir  # reused
