"""Where and how a run computes: device, autocast, determinism, RNG state, versions.

Kept apart from the loop so that `train.fit` reads as the steps of training, and so
that everything a run records about its machine (config.json's `versions` and
`device_name`) comes from one place.
"""
from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from typing import Iterator

import torch

from .config import DEVICE_PATTERN
from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")
    if name in ("auto", "cuda") and torch.cuda.is_available():  # the current GPU (a torchrun rank's own)
        return torch.device("cuda", torch.cuda.current_device())
    if name == "auto":
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here; use device='auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS is not available here; use device='auto' or 'cpu'")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 (no autocast) on CPU unless asked."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """torch's deterministic algorithms for the duration of the run, then restored."""
    prev_alg = torch.are_deterministic_algorithms_enabled()
    prev_bench, prev_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_alg)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_bench, prev_det


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def versions() -> dict:
    import torchvision

    from . import __version__

    return {
        "cooplib": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
