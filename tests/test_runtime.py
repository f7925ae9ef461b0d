"""Where a run computes: the CPU bf16 detection, its override, and what "auto" resolves to."""
from __future__ import annotations

import pytest
import torch

from cooplib.engine import runtime
from cooplib.engine.config import RunConfig
from cooplib.base.errors import ConfigError

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.mark.parametrize("env, expected", [("1", torch.bfloat16), ("0", None)])
def test_auto_on_cpu_follows_the_bf16_override(monkeypatch, env, expected):
    monkeypatch.setenv(runtime.CPU_BF16_ENV, env)
    assert runtime.cpu_bf16_supported() is (env == "1")
    assert runtime.autocast_dtype("auto", CPU) is expected
    # explicit precisions and other devices do not depend on the CPU
    assert runtime.autocast_dtype("bf16", CPU) is torch.bfloat16
    assert runtime.autocast_dtype("fp32", CPU) is None
    assert runtime.autocast_dtype("auto", CUDA) is torch.bfloat16
    assert runtime.autocast_dtype("auto", MPS) is None


def test_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.delenv(runtime.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda: {"sse2", "avx2", "avx512f", "avx512bw"})
    assert not runtime.cpu_bf16_supported()  # AVX512 alone emulates bf16: slower than fp32
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda: {"avx2", flag})
        assert runtime.cpu_bf16_supported()
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "0")
    assert not runtime.cpu_bf16_supported()
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="COOPLIB_CPU_BF16"):
        runtime.cpu_bf16_supported()


def test_channels_last_by_default_on_cpu_and_cuda_not_mps():
    assert runtime.use_channels_last(None, CPU, torch.bfloat16) is True
    assert runtime.use_channels_last(None, CPU, None) is True
    assert runtime.use_channels_last(None, CUDA, None) is True
    assert runtime.use_channels_last(None, MPS, None) is False
    assert runtime.use_channels_last(False, CPU, torch.bfloat16) is False
    assert runtime.use_channels_last(True, CPU, None) is True


def test_resolve_new_recorded_and_legacy_runs(monkeypatch):
    cfg = RunConfig(device="cpu")
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "1")
    new = runtime.resolve(cfg, CPU)
    assert new == {"precision": "bf16", "channels_last": True, "cpu_bf16": True}
    assert runtime.resolve(cfg.replace(precision="fp32", channels_last=False), CPU)["precision"] == "fp32"
    # a run keeps what it recorded, whatever the detection says now
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "0")
    assert runtime.resolve(cfg, CPU, recorded=new) == new
    assert runtime.resolve(cfg, CPU) == {"precision": "fp32", "channels_last": True, "cpu_bf16": False}
    assert runtime.resolve(cfg.replace(channels_last=False), CPU)["channels_last"] is False
    # a run started before the record existed: the old rules (fp32, contiguous on the CPU)
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "1")
    legacy = runtime.resolve(cfg, CPU, started=True)
    assert (legacy["precision"], legacy["channels_last"]) == ("fp32", False)
    assert runtime.resolve(cfg.replace(precision="bf16"), CPU, started=True)["precision"] == "bf16"
    assert runtime.resolved_dtype(new) is torch.bfloat16 and runtime.resolved_dtype(legacy) is None


def test_recorded_versions_do_not_import_torchvision():
    """Every run records torchvision's version; reading it must not cost each kernel the 3 s import."""
    import subprocess
    import sys

    code = ("import sys; from cooplib.engine import runtime; v = runtime.versions(); "
            "assert 'torchvision' not in sys.modules; import torchvision; "
            "assert v['torchvision'] == torchvision.__version__, v; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
