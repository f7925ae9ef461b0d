"""Run experiments by name: RunConfig -> data + Learner -> `train.fit` -> run directory.

This is what notebooks call. Each config gets its own run directory named after it
(`RunConfig.run_name`, which includes a hash of the config), so re-executing a notebook
reuses complete runs, resumes interrupted ones, and never mixes two configs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

from . import data as datasets
from . import methods
from .config import RunConfig
from .train import RunResult, fit

REPO_ROOT = Path(__file__).resolve().parent.parent


def runs_root(out_dir: str | Path | None = None) -> Path:
    """Where run directories go: `out_dir`, else $COOPLIB_RUNS_DIR, else ./runs."""
    if out_dir is not None:
        return Path(out_dir).expanduser().resolve()
    env = os.environ.get("COOPLIB_RUNS_DIR")
    return Path(env).expanduser().resolve() if env else Path.cwd().resolve() / "runs"


def load_data(config: RunConfig) -> datasets.ImageData:
    """The dataset of `config`, subset as asked (deterministic in the data seed 0)."""
    data = datasets.load(config.dataset, root=config.data_root, download=config.download, **config.dataset_args)
    if config.train_size is not None or config.test_size is not None:
        data = data.subset(config.train_size, config.test_size, seed=0)
    return data


def build_learner(config: RunConfig, data: datasets.ImageData) -> methods.Learner:
    """The Learner of `config`, initialised from `config.seed`."""
    torch.manual_seed(config.seed)
    return methods.build(config.method, config.model, data.num_classes, data.in_channels, **config.method_args)


def run(config: RunConfig, out_dir: str | Path | None = None, *, run_dir: str | Path | None = None, resume: bool = True) -> RunResult:
    """Train (or reuse/resume) one run; its directory is `out_dir/config.run_name()`."""
    data = load_data(config)
    learner = build_learner(config, data)
    target = Path(run_dir) if run_dir is not None else runs_root(out_dir) / config.run_name()
    return fit(learner, data, config, target, resume=resume)


def run_all(configs: Iterable[RunConfig], out_dir: str | Path | None = None) -> list[Path]:
    """Run every config (loading each dataset once); return their run directories."""
    cache: dict[tuple, datasets.ImageData] = {}
    dirs = []
    for config in configs:
        key = (config.dataset, config.data_root, config.download, repr(sorted(config.dataset_args.items())), config.train_size, config.test_size)
        if key not in cache:
            cache[key] = load_data(config)
        data = cache[key]
        target = runs_root(out_dir) / config.run_name()
        dirs.append(fit(build_learner(config, data), data, config, target).run_dir)
    return dirs
