"""One run on several processes/GPUs with DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node=4 -m cooplib.ddp --config run.json --run-dir runs/my-run
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
        -m cooplib.ddp --config run.json --run-dir /shared/runs/my-run        (multi-node)

`--config` is a JSON RunConfig (e.g. the `config` of another run's config.json, or a
file written by `RunConfig.to_dict()`). The run is the same run as on one process:
`config.batch_size` is the *global* batch; every rank draws the same shuffled,
augmented global batch from its device-resident loader and trains on its slice
(`shard`), so the data order does not depend on the number of processes and a run can
resume on another world size. BatchNorm statistics are synchronised over the global
batch by default on CUDA (`RunConfig.sync_bn`, SyncBatchNorm): the papers' recipes
define BN over their batch of 128, and with it a DDP run computes what the
single-process run computes, up to the order of floating-point sums. (PyTorch has no
CPU SyncBatchNorm: on CPU, BN normalises each rank's slice.) Metrics are summed over ranks once
per epoch; rank 0 alone holds the run directory's lock and writes it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import ConfigError


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    rank, size = world()
    return t if size == 1 else t.tensor_split(size)[rank]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (itself on one process)."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def wrap(learner: torch.nn.Module, device: torch.device, sync_bn: bool | None) -> torch.nn.Module:
    """The module the loop calls: DDP around the learner when there are several ranks.

    `sync_bn` None means on for CUDA; PyTorch's SyncBatchNorm has no CPU kernel, so on
    CPU (gloo) each rank's BatchNorm normalises its own slice of the batch."""
    if world()[1] == 1:
        return learner
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn and device.type != "cuda":
        raise ConfigError("sync_bn=True needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                          "use sync_bn=None or False on CPU")
    if sync_bn or (sync_bn is None and device.type == "cuda"):
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(learner)
    # sequential updates (several optimizer steps per batch) leave some parameters unused
    return DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=getattr(learner, "substeps", 1) > 1)


def main(argv: list[str] | None = None) -> int:
    from . import experiment
    from .config import RunConfig

    ap = argparse.ArgumentParser(prog="torchrun ... -m cooplib.ddp", description=__doc__,
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
