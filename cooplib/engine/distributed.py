"""The process-group primitives the loop needs to run one run on several processes/GPUs
with DistributedDataParallel (`cooplib.engine.launch` is the torchrun entry point).

The run is the same run as on one process:
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

import torch
import torch.distributed as dist

from ..base.errors import ConfigError


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def shard(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes differ by at most one) along
    `dim`, the batch dimension (1 for a (views, B, ...) batch of augmented views)."""
    rank, size = world()
    return t if size == 1 else t.tensor_split(size, dim)[rank]


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
