"""One run on two processes (torchrun, gloo on CPU) is the same run as on one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cooplib.engine import runs
from cooplib.engine.config import RunConfig

#: a torchrun script: registers a BatchNorm-free model (per-rank BN would differ from
#: the single-process run by construction), then trains as `cooplib.engine.launch` does
SCRIPT = """
import json, os, sys
import torch
from torch import nn
from cooplib.engine import experiment, launch
from cooplib.engine.config import RunConfig
from cooplib.base.registry import MODELS

class Seen(nn.Module):
    # counts the training images this process sees (a buffer, so it is in the weights)
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
    def forward(self, x):
        if self.training:
            self.count += x.shape[0]
        return x

@MODELS.register("lineartest")
def build_linear(num_classes, in_channels=3):
    return nn.Sequential(Seen(), nn.Flatten(), nn.Linear(in_channels * 64, 16), nn.ReLU(), nn.Linear(16, num_classes))

if "RANK" in os.environ:
    sys.exit(launch.main(sys.argv[1:]))
experiment.run(RunConfig.from_dict(json.load(open(sys.argv[2]))), run_dir=sys.argv[4])
"""


def train(tmp_path: Path, cfg: RunConfig, name: str, nproc: int) -> Path:
    script, config = tmp_path / "train.py", tmp_path / f"{name}.json"
    script.write_text(SCRIPT)
    config.write_text(json.dumps(cfg.to_dict()))
    run_dir = tmp_path / name
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, str(script), "--config", str(config), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_two_ranks_compute_the_single_process_run(quadrants_npz, tmp_path):
    """Same global batch and data order, gradients averaged over equal slices: the same
    weights and records up to the order of floating-point sums (tolerance 1e-5)."""
    cfg = RunConfig(model="lineartest", dataset="npz", dataset_args={"path": str(quadrants_npz)}, epochs=3, batch_size=32,
                    lr=0.05, deterministic=True, device="cpu", progress=False, tensorboard=False)
    one, two = train(tmp_path, cfg, "single", 1), train(tmp_path, cfg, "ddp", 2)
    a, b = runs.RunDir(one).weights(), runs.RunDir(two).weights()
    seen = "net.0.count"  # rank 0 trained on its half of every global batch
    assert int(a.pop(seen)) == 3 * 96 and int(b.pop(seen)) == 3 * 96 // 2
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    ra, rb = runs.RunDir(one).records(), runs.RunDir(two).records()
    for x, y in zip(ra, rb):
        assert x["lr"] == y["lr"]
        assert x["test/net/top1"] == pytest.approx(y["test/net/top1"], abs=1e-9)  # counts over all 40 test images
        assert x["train/loss"] == pytest.approx(y["train/loss"], rel=1e-5)
    assert not (two / ".lock").read_text() == "" and runs.RunDir(two).state == "complete" and not runs.RunDir(two).verify()


@pytest.mark.slow
@pytest.mark.parametrize("method,args", [("one", {"branches": 2}), ("dml", {"peers": 2, "update": "sequential"})])
def test_one_and_dml_train_under_ddp(quadrants_npz, tmp_path, method, args):
    cfg = RunConfig(method=method, method_args=args, model="resnet8", dataset="npz", dataset_args={"path": str(quadrants_npz)},
                    epochs=3, batch_size=32, lr=0.05, deterministic=True, device="cpu", progress=False, tensorboard=False)
    run = runs.RunDir(train(tmp_path, cfg, method, 2))
    records = run.records()
    assert run.state == "complete" and len(records) == 3
    heads = {k.split("/")[1] for k in records[-1] if k.startswith("test/") and k.endswith("/top1")}
    assert heads == ({"branch0", "branch1", "ensemble", "average"} if method == "one" else {"peer0", "peer1", "average"})
    assert records[-1]["train/loss"] < records[0]["train/loss"]
