"""The torchrun entry point: one run on several processes/GPUs with DistributedDataParallel.

    torchrun --nproc_per_node=4 -m cooplib.engine.launch --config run.json --run-dir runs/my-run
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m cooplib.engine.launch --config run.json --run-dir /shared/runs/my-run        (multi-node)

`--config` is a JSON RunConfig (e.g. the `config` of another run's config.json, or a
file written by `RunConfig.to_dict()`). Each process joins the process group and calls
`experiment.run`; what the loop does on several ranks (the global batch, sharding,
SyncBatchNorm, metrics summed over ranks, rank 0 writing the run directory) is in
`cooplib.engine.distributed`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from . import experiment
from .config import RunConfig
from .distributed import is_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="torchrun ... -m cooplib.engine.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a JSON file holding a RunConfig (or a run's config.json)")
    ap.add_argument("--run-dir", required=True, help="the run directory (rank 0 writes it)")
    args = ap.parse_args(argv)
    blob = json.loads(Path(args.config).read_text())
    config = RunConfig.from_dict(blob.get("config", blob) if isinstance(blob.get("config"), dict) else blob)
    cuda = config.device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:  # 'auto' and 'cuda' resolve to the current device: this rank's GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if not is_main():
            config = config.replace(progress=False, tensorboard=False)
        experiment.run(config, run_dir=args.run_dir)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
