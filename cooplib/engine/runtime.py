"""Where and how a run computes: device, autocast, determinism, RNG state, versions.

Kept apart from the loop so that `train.fit` reads as the steps of training, and so
that everything a run records about its machine (config.json's `versions`,
`device_name` and `resolved`) comes from one place.

Precision defaults (`precision="auto"`, `channels_last=None`): bf16 autocast on CUDA and
on a CPU with native bf16 instructions (AVX512-BF16 or AMX-BF16, `cpu_bf16_supported`),
fp32 on any other CPU; channels_last on CUDA and on every CPU. Why (benchmarks/README.md,
"CPU precision"): on a 2-core Zen4 with avx512_bf16 one ResNet SGD step runs about 2x
faster in bf16 + channels_last than in fp32; a CPU without native bf16 emulates it
through fp32 and is 10-15x SLOWER in bf16 (measured on a 2-core AVX2 EPYC), so it keeps
fp32; channels_last alone speeds fp32 up 1.15-1.4x on both. `$COOPLIB_CPU_BF16=0/1`
overrides the detection. What a run resolved is recorded in its config.json
(`resolved`), and a resumed run keeps it (`resolve`): a run started before this record
existed keeps the old rules (fp32, contiguous on the CPU).
"""
from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .config import DEVICE_PATTERN
from ..base.errors import ConfigError


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


#: overrides the CPU bf16 detection: "1" (use bf16 by default) or "0" (fp32)
CPU_BF16_ENV = "COOPLIB_CPU_BF16"
#: /proc/cpuinfo flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively, so that bf16 autocast speeds training up.

    `$COOPLIB_CPU_BF16` = "1"/"0" decides when set. Otherwise Linux's /proc/cpuinfo
    flags decide: `avx512_bf16` or `amx_bf16` (the instructions oneDNN's bf16
    convolutions and matmuls use). Where that file is missing (macOS, Windows), torch's
    `torch.backends.mkldnn`/oneDNN check `torch.ops.mkldnn._is_mkldnn_bf16_supported()`
    is asked; it is True from AVX512-BW/VL/DQ up (bf16 emulated on AVX512 cores that
    lack BF16, which is slower than fp32), so on Linux the flags are preferred. torch's
    `torch.backends.cpu.get_cpu_capability()` only names the vector ISA level ("AVX512",
    "AVX2"), not bf16, so it cannot tell.
    """
    env = os.environ.get(CPU_BF16_ENV, "").strip()
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise ConfigError(f"${CPU_BF16_ENV} must be '0' or '1', got {env!r}")
    flags = _cpuinfo_flags()
    if flags is not None:
        return any(f in flags for f in BF16_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (None: fp32, no autocast).

    "bf16" always; "fp32" never; "auto": bf16 on CUDA and on a CPU with native bf16
    (`cpu_bf16_supported`), fp32 elsewhere (MPS, CPUs without native bf16).
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_supported())):
        return torch.bfloat16
    return None


def use_channels_last(channels_last: bool | None, device: torch.device, amp_dtype: torch.dtype | None = None) -> bool:
    """`channels_last` when given; None: on for CUDA and for the CPU (fp32 or bf16), off on MPS.

    On the CPU oneDNN's convolutions are faster in NHWC in every case measured: one
    ResNet training step at batch 128, 2 threads, fp32 + channels_last vs fp32 is 1.17x
    (ResNet-32, 32x32x3) and 1.26x (ResNet-20, 28x28x1) on a 2-core AMD EPYC without
    AVX512, 1.42x reported on a Zen4 (benchmarks/README.md, "CPU precision"). `amp_dtype` does
    not change the answer; it is taken so that a rule per precision stays one line.
    """
    if channels_last is not None:
        return channels_last
    return device.type in ("cuda", "cpu")


def resolve(config, device: torch.device, recorded: dict | None = None, started: bool = False) -> dict:
    """What `config`'s precision and layout settings mean for this run, as recorded in its
    config.json under `resolved`: {"precision": "bf16"/"fp32", "channels_last", "cpu_bf16"}.

    A run that has started keeps what it `recorded`; a started run without a record was
    trained before "auto" could mean bf16 on a CPU, so it keeps the old rules (fp32 and
    contiguous on the CPU), and its resume stays bit-identical.
    """
    if recorded:
        return dict(recorded)
    if started:
        amp = torch.bfloat16 if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda") else None
        cl = device.type == "cuda" if config.channels_last is None else config.channels_last
        return {"precision": "bf16" if amp else "fp32", "channels_last": cl, "cpu_bf16": None}
    amp = autocast_dtype(config.precision, device)
    return {"precision": "bf16" if amp else "fp32", "channels_last": use_channels_last(config.channels_last, device, amp),
            "cpu_bf16": cpu_bf16_supported() if device.type == "cpu" else None}


def resolved_dtype(resolved: dict) -> torch.dtype | None:
    return torch.bfloat16 if resolved["precision"] == "bf16" else None


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
    """Recorded in every run."""
    from .. import __version__

    return {
        "cooplib": __version__,
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def _torchvision_version() -> str | None:
    """torchvision's version string without importing it when nothing has: the import costs
    3 s (it loads torch._dynamo), paid by every notebook kernel only to record a version."""
    import importlib.util
    import re
    import sys

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", (Path(spec.origin).parent / "version.py").read_text(), re.M)
    return found.group(1) if found else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
