"""Branch expansion: a ONE network with more branches, initialised from a trained one.

The claim under test (book/methods.md, "Branch expansion") is that a 5-branch network
started from a trained 3-branch one classifies no worse. That needs the expanded network
to *compute the old function* at the start; the earlier scripts padded the gate with
zero rows, which still gives new branches weight (softmax of 0 is not 0). Here:

- ``"duplicate"``: new branch j is a copy of old branch ``j % m``. Its gate row and gate
  BatchNorm entries are copied too, and every member of a group of k copies of one
  source gets ``gate_prior = old prior - log k``: the group's softmax weights sum to the
  source's old weight, so with ``noise=0`` the ensemble is exactly the old one. Copies
  get identical gradients and would stay identical forever (same data, same loss), so
  train with ``noise > 0`` (Gaussian, relative to each tensor's std) to break symmetry.
- ``"fresh"``: new branches are randomly initialised (seeded) and their gate prior is
  ``fresh_prior`` (default -10): their weight is at most about e^-10 relative to the old
  branches, so the ensemble moves by ~1e-4 of the logit scale. Trade-off: the gate's
  gradient on a branch is proportional to its weight, so with a fixed very negative
  prior the gate practically never lets the new branches in (they still learn from the
  teacher through their own CE and KL terms). A milder prior (e.g. -3) lets them in
  sooner at the cost of changing the starting function more; ``set_gate_prior`` lets a
  caller anneal it. Prefer ``"duplicate"`` when the function must be kept exactly.
- ``"new_head"``: new branch j copies the *features* of old branch ``j % m`` (its
  ``layer3``, plus ``noise``) but gets a freshly initialised classifier, fresh gate rows
  and the ``fresh_prior``: like ``"fresh"`` the function is kept up to ~e^-10, and unlike
  ``"duplicate"`` the copy predicts differently from its source from the start, so it
  cannot stay a clone (a clone gets the same gradients as its source).

What the strategies do *after* the expansion step is measured in the branch-expansion
chapter. Measured there with a fixed prior: duplicates stay near-clones of their source
and fresh branches keep gate weight ~0 (the gate's gradient on a branch is proportional
to its weight, and the ReLU before the softmax blocks the rest). ``annealed_prior`` (used
by ONE's ``expand_anneal``) moves every non-zero prior linearly to 0 over a few epochs,
so parked branches become real members while the function at the moment of expansion
is still kept.

Shared layers and existing branches are copied exactly; the old model is untouched.
``load_state_strict`` and ``expand_optimizer_state`` carry weights and momentum over
without silently dropping anything.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Iterable, Mapping

import torch
from torch import nn

from .multibranch import MultiBranchResNet

STRATEGIES = ("duplicate", "fresh", "new_head")
_BRANCH = re.compile(r"(^|\.)branches\.(\d+)\.")
_GATE = re.compile(r"(^|\.)(gate_fc\.(weight|bias)|gate_bn\.(weight|bias|running_mean|running_var)|gate_prior)$")


# ---------------------------------------------------------------- strict loading


def load_state_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load every key of ``state_dict`` into ``module``, or raise naming what does not fit.

    Missing keys, unexpected keys and shape mismatches are all errors (a ``KeyError`` /
    ``ValueError`` listing the names): a renamed layer can never be dropped silently.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise KeyError(
            f"state dict does not match {type(module).__name__}: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if shapes:
        raise ValueError(f"shape mismatch (given vs expected) for {', '.join(shapes)}")
    module.load_state_dict(dict(state_dict), strict=True)


# ---------------------------------------------------------------- expansion


def set_gate_prior(model: MultiBranchResNet, prior: Iterable[float] | torch.Tensor) -> None:
    """Set the per-branch additive gate offsets (e.g. to anneal a fresh branch's prior)."""
    value = torch.as_tensor(prior, dtype=model.gate_prior.dtype, device=model.gate_prior.device)
    if value.shape != model.gate_prior.shape:
        raise ValueError(f"prior needs shape {tuple(model.gate_prior.shape)}, got {tuple(value.shape)}")
    model.gate_prior.copy_(value)


def annealed_prior(start: torch.Tensor, epochs_done: float, anneal_epochs: float) -> torch.Tensor:
    """The gate prior after ``epochs_done`` (fractional) epochs of a linear anneal from
    ``start`` to 0 over ``anneal_epochs``: ``start * max(0, 1 - epochs_done / anneal_epochs)``.
    ``anneal_epochs <= 0`` keeps ``start`` (the fixed prior)."""
    if anneal_epochs <= 0:
        return start
    return start * max(0.0, 1.0 - float(epochs_done) / float(anneal_epochs))


def branch_sources(m: int, new_m: int, strategy: str) -> list[int | None]:
    """Old branch each new branch starts from (None: fresh); for ``"new_head"`` the source
    of its features (its classifier and gate rows are fresh, see ``fresh_classifiers``)."""
    if strategy in ("duplicate", "new_head"):
        return [j % m for j in range(new_m)]
    return [j if j < m else None for j in range(new_m)]


def fresh_classifiers(m: int, new_m: int, strategy: str) -> list[bool]:
    """Whether branch j's classifier (and gate rows, prior) start fresh although its
    features are copied (``"new_head"``'s new branches)."""
    return [strategy == "new_head" and j >= m for j in range(new_m)]


def expand_branches(
    model: MultiBranchResNet,
    new_m: int,
    strategy: str = "duplicate",
    noise: float = 0.0,
    seed: int = 0,
    fresh_prior: float = -10.0,
) -> MultiBranchResNet:
    """A new ``new_m``-branch network that starts from ``model`` (see the module doc).

    ``result.branch_sources[j]`` records the old branch that branch j copies (None for
    fresh ones) and ``result.fresh_fc[j]`` whether its classifier is new;
    ``expand_optimizer_state`` uses both.
    """
    m = model.num_branches
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(new_m, int) or new_m <= m:
        raise ValueError(f"new_m must be an integer > the current {m} branches, got {new_m!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    sources = branch_sources(m, new_m, strategy)
    fresh_fc = fresh_classifiers(m, new_m, strategy)
    gate_sources = [None if f else s for s, f in zip(sources, fresh_fc)]
    ref = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = MultiBranchResNet(
            model.base, model.num_classes, model.in_channels, branches=new_m, share=model.share,
            **model.resnet_kwargs,
        )
        new.to(device=ref.device, dtype=ref.dtype)
        old_sd = model.state_dict()
        new_sd = new.state_dict()
        state = {k: _source_value(k, v, old_sd, sources, fresh_fc) for k, v in new_sd.items()}
        _adjust_gate(state, old_sd, gate_sources, fresh_prior)
        load_state_strict(new, state)
        new.fresh_fc = fresh_fc
        if noise > 0:
            gen = torch.Generator(device=ref.device).manual_seed(seed)
            _perturb_copies(new, sources, m, noise, gen)
    new.train(model.training)
    new.branch_sources = sources
    new.fresh_fc = fresh_fc
    return new


_FC = re.compile(r"(^|\.)branches\.\d+\.fc\.")


def _source_value(
    key: str, fresh: torch.Tensor, old_sd: dict, sources: list[int | None], fresh_fc: list[bool]
) -> torch.Tensor:
    """What the new state entry starts as: old trunk/branch/gate values, or ``fresh``."""
    if _GATE.search(key):
        return fresh  # per-branch rows: filled in by _adjust_gate
    hit = _BRANCH.search(key)
    if hit is None:
        return old_sd[key].clone()  # shared layers (and anything else): kept exactly
    j = int(hit.group(2))
    src = sources[j]
    if src is None or (fresh_fc[j] and _FC.search(key)):
        return fresh
    return old_sd[_BRANCH.sub(rf"\g<1>branches.{src}.", key, count=1)].clone()


def _adjust_gate(state: dict, old_sd: dict, sources: list[int | None], fresh_prior: float) -> None:
    """Copy the gate rows of each branch's source; split a source's weight over its copies."""
    counts: dict[int, int] = {}
    for s in sources:
        if s is not None:
            counts[s] = counts.get(s, 0) + 1
    for key in [k for k in state if _GATE.search(k)]:
        old, new = old_sd[key], state[key].clone()
        for j, s in enumerate(sources):
            if s is not None:
                new[j] = old[s]
            elif key.endswith("gate_prior"):
                new[j] = fresh_prior
        if key.endswith("gate_prior"):
            for j, s in enumerate(sources):
                if s is not None and counts[s] > 1:
                    new[j] = old[s] - math.log(counts[s])
        state[key] = new


@torch.no_grad()
def _perturb_copies(
    model: MultiBranchResNet, sources: list[int | None], m: int, noise: float, gen: torch.Generator
) -> None:
    """Add noise * std(tensor) Gaussian noise to the parameters of the new copies (old
    branches and the gate stay exact); a tensor with std 0 (e.g. untrained BN) is kept.
    A fresh classifier (``"new_head"``) is left as initialised."""
    for j in range(m, len(sources)):
        if sources[j] is None:
            continue
        for name, p in model.branches[j].named_parameters():
            if getattr(model, "fresh_fc", None) and model.fresh_fc[j] and name.startswith("fc."):
                continue
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * (noise * p.std()))


# ---------------------------------------------------------------- optimizer state


def expanded_optimizer_state(
    old_opt_state: dict,
    old_model: nn.Module,
    new_model: nn.Module,
    sources: list[int | None] | None = None,
    fresh_fc: list[bool] | None = None,
) -> dict:
    """The old optimizer's per-parameter state (momentum, ...) mapped onto ``new_model``.

    ``old_opt_state`` is ``old_optimizer.state_dict()`` of an optimizer built over
    ``old_model``'s trainable parameters in ``parameters()`` order (as ``train.fit`` and
    ``gradratio.per_tensor_param_groups`` do). ``old_model`` / ``new_model`` are the
    multi-branch nets or Learners wrapping them (names may carry a prefix like "net.").
    Returns ``{"state": {i: ...}}`` indexed like an optimizer built the same way over
    ``new_model`` (what ``train.carry_optimizer_state`` loads).

    Kept parameters get their old state; a duplicated branch gets a copy of its source's
    state (consistent with copying its weights: the copy continues the same trajectory);
    a fresh branch gets none (the optimizer starts it at zero, as for any new
    parameter), and its gate rows get zeros; so do a ``"new_head"`` branch's classifier
    and gate rows (``fresh_fc``), while its copied features get their source's state.
    """
    states = _states_by_name(old_opt_state, old_model, new_model, sources, fresh_fc)
    trainable = [n for n, p in new_model.named_parameters() if p.requires_grad]
    return {"state": {i: states[n] for i, n in enumerate(trainable) if states.get(n)}}


def expand_optimizer_state(
    old_opt_state: dict,
    old_model: nn.Module,
    new_model: nn.Module,
    new_optimizer: torch.optim.Optimizer,
    sources: list[int | None] | None = None,
    fresh_fc: list[bool] | None = None,
) -> None:
    """Like ``expanded_optimizer_state``, written straight into ``new_optimizer``'s state
    (any parameter grouping); its hyper-parameters are left as they are."""
    states = _states_by_name(old_opt_state, old_model, new_model, sources, fresh_fc)
    by_param = {p: n for n, p in new_model.named_parameters()}
    for group in new_optimizer.param_groups:
        for p in group["params"]:
            name = by_param.get(p)
            if name is None:
                raise ValueError("new_optimizer holds a parameter that is not in new_model")
            if states.get(name):
                new_optimizer.state[p] = {
                    k: v.to(p.device) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in states[name].items()
                }


def _states_by_name(old_opt_state, old_model, new_model, sources, fresh_fc=None) -> dict[str, dict]:
    def recorded(attr):
        return getattr(new_model, attr, None) or getattr(getattr(new_model, "net", None), attr, None)

    if sources is None:
        sources = recorded("branch_sources")
        fresh_fc = recorded("fresh_fc") if fresh_fc is None else fresh_fc
    if sources is None:
        raise ValueError("pass sources=..., or a model returned by expand_branches (it records them)")
    fresh_fc = list(fresh_fc) if fresh_fc is not None else [False] * len(sources)
    if len(fresh_fc) != len(sources):
        raise ValueError(f"fresh_fc has {len(fresh_fc)} entries for {len(sources)} branches")
    old_named = [(n, p) for n, p in old_model.named_parameters() if p.requires_grad]
    ids = [i for g in old_opt_state["param_groups"] for i in g["params"]]
    if len(ids) != len(old_named):
        raise ValueError(
            f"the old optimizer holds {len(ids)} parameters but old_model has {len(old_named)} trainable ones; "
            f"it must have been built over old_model's trainable parameters in order"
        )
    saved = old_opt_state["state"]
    old_state = {name: saved.get(i, saved.get(str(i), {})) for i, (name, _) in zip(ids, old_named)}
    old_shapes = {n: tuple(p.shape) for n, p in old_named}
    return {
        n: _new_param_state(n, p, old_state, old_shapes, sources, fresh_fc)
        for n, p in new_model.named_parameters()
        if p.requires_grad
    }


def _new_param_state(name, p, old_state, old_shapes, sources, fresh_fc) -> dict:
    if _GATE.search(name):
        sources = [None if f else s for s, f in zip(sources, fresh_fc)]
        if name not in old_shapes:
            raise KeyError(f"{name}: no such gate parameter in the old model")
        old = old_state[name]
        out = {}
        for k, v in old.items():
            if torch.is_tensor(v) and v.dim() > 0 and tuple(v.shape) == old_shapes[name]:
                rows = torch.zeros((len(sources), *v.shape[1:]), dtype=v.dtype, device=p.device)
                for j, s in enumerate(sources):
                    if s is not None:
                        rows[j] = v[s].to(p.device)
                out[k] = rows
            else:
                out[k] = copy.deepcopy(v)
        return out
    hit = _BRANCH.search(name)
    src_name = name
    if hit is not None:
        j = int(hit.group(2))
        src = sources[j]
        if src is None or (fresh_fc[j] and _FC.search(name)):
            return {}
        src_name = _BRANCH.sub(rf"\g<1>branches.{src}.", name, count=1)
    if src_name not in old_state:
        raise KeyError(f"{name}: no parameter {src_name!r} in the old model")
    if old_shapes[src_name] != tuple(p.shape):
        raise ValueError(f"{name}: shape {tuple(p.shape)} but the old {src_name} has {old_shapes[src_name]}")
    return {
        k: (v.detach().clone().to(p.device) if torch.is_tensor(v) and v.dim() > 0 else copy.deepcopy(v))
        for k, v in old_state[src_name].items()
    }


__all__ = [
    "expand_branches",
    "load_state_strict",
    "expand_optimizer_state",
    "expanded_optimizer_state",
    "set_gate_prior",
    "branch_sources",
    "fresh_classifiers",
    "annealed_prior",
    "STRATEGIES",
]
