"""Feature taps: read intermediate outputs of a network through forward hooks.

Feature distillation and representation analysis need the outputs of named stages
(``layer1``..``layer3``, the pooled ``pool`` features of cooplib's ResNets) without
changing the models: as torchdistill does (its ``ForwardHookManager``), a forward hook
on each named module (``model.get_submodule(name)``) stores the module's output on
every forward call. The models stay the plain networks that are deployed and exported.

    taps = Taps(net, ["layer2", "pool"])
    logits = net(x)
    f2 = taps["layer2"]          # the tensor layer2 returned in that forward

Outputs are kept as returned (in the graph, so a loss on them trains the network);
``Taps.clear()`` drops them, ``Taps.remove()`` detaches the hooks.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

#: the stage outputs of cooplib's CIFAR ResNets, in order (input side first)
RESNET_STAGES = ("layer1", "layer2", "layer3", "pool")


class Taps:
    """Forward hooks on the named submodules of `model`, storing their latest outputs."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in self.names:
            try:
                module = model.get_submodule(name)
            except AttributeError as exc:
                known = [n for n, _ in model.named_children()]
                raise KeyError(f"no submodule {name!r} to tap; top-level modules: {known}") from exc
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def store(module: nn.Module, inputs, output) -> None:
            self.outputs[name] = output
        return store

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            raise KeyError(f"tap {name!r} has no output yet: run a forward pass first (taps: {self.names})")
        return self.outputs[name]

    def features(self) -> dict[str, torch.Tensor]:
        """The latest output of every tap, in the order the taps were named."""
        return {n: self[n] for n in self.names}

    def clear(self) -> None:
        self.outputs = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> "Taps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def collect(model: nn.Module, x: torch.Tensor, names: Iterable[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Features of `model` (in eval mode) at the named modules over the inputs `x`,
    concatenated over batches and flattened to (N, features), float32, on the CPU."""
    names = tuple(names)
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with Taps(model, names) as taps:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
            for n in names:
                out[n].append(taps[n].detach().float().flatten(1).cpu())
    model.train(was_training)
    return {n: torch.cat(v) for n, v in out.items()}
