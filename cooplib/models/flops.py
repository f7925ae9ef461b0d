"""Parameter and FLOP accounting (the ONE paper's TrCost / TeCost).

Convention (ONE paper, Lan et al. 2018): FLOPs = 2 x multiply-accumulates of the
convolution and linear layers only; BatchNorm, activations, pooling, additions and
biases are not counted. With it ResNet-32 (CIFAR-100, 32x32) costs 1.383e8 FLOPs and
ONE-3 on ResNet-32 2.285e8, the paper's 1.38e8 / 2.28e8.

Counting uses ``torch.utils.flop_counter.FlopCounterMode`` (which already counts conv
and matmul as 2 x MACs) and keeps only its conv/matmul entries, so whatever else it may
learn to count in future torch versions does not leak in.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: aten ops that implement conv and linear layers (Linear -> addmm / mm / bmm)
_COUNTED_OPS = frozenset(
    {"convolution", "_convolution", "cudnn_convolution", "mm", "addmm", "bmm", "baddbmm"}
)


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (unique) parameters; shared tensors are counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _op_name(op: Any) -> str:
    """'aten.convolution.default' / 'aten.convolution' -> 'convolution'."""
    parts = str(op).split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "aten" else parts[0]


def count_flops(module: nn.Module, input_shape: tuple[int, int, int], batch: int = 1) -> int:
    """Forward FLOPs per image (2 x conv/linear MACs) for inputs of shape (C, H, W).

    The module runs in eval mode (so BatchNorm uses running stats and a batch of 1 is
    fine) under ``no_grad``; every submodule's train/eval flag is restored afterwards.
    Works whatever ``forward`` returns (tensor, tuple, dict of heads).
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)!r}")
    ref = next(module.parameters(), None)
    if ref is None:
        ref = next(module.buffers(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros(batch, *input_shape, device=device, dtype=dtype)

    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(x)
    finally:
        for m, training in modes.items():
            m.training = training
    per_op = counter.get_flop_counts().get("Global", {})
    total = sum(n for op, n in per_op.items() if _op_name(op) in _COUNTED_OPS)
    return int(total) // batch


def cost(learner: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Training and test cost of a Learner (or a plain module, where train == test).

    - ``params``: trainable parameters of the whole learner (what training updates);
    - ``train_flops``: forward FLOPs per image of the whole learner (TrCost);
    - ``test_params`` / ``test_flops``: all parameters and forward FLOPs per image of
      ``learner.deployable()``, the network used at test time (TeCost).
    """
    deploy = learner.deployable() if hasattr(learner, "deployable") else learner
    return {
        "params": count_params(learner),
        "train_flops": count_flops(learner, input_shape),
        "test_params": count_params(deploy, trainable_only=False),
        "test_flops": count_flops(deploy, input_shape),
    }
