"""Contrastive representation distillation (CRD; Tian et al., ICLR 2020) as a `kd.Distill` kind.

As HobbitLong/RepDistiller@b84f547 computes it (crd/criterion.py ``CRDLoss``, crd/memory.py
``ContrastMemory``, dataset/cifar100.py ``CIFAR100InstanceSample``, train_student.py
defaults): the pooled features of student and teacher are embedded to 128 dimensions
(linear + L2 normalisation, trained with the student, not deployed); each anchor is
scored against the other network's memory bank rows of its own example and of K = 16384
negatives drawn uniformly from the examples of *other* classes ("exact" mode; with
replacement only when there are fewer than K), ``exp(v . m / T)`` with T = 0.07 divided
by a constant Z fixed on the first batch (mean score times the training-set size); the NCE
loss (`cooplib.losses.crd_nce`) of both directions is summed; then the banks' rows of the
batch move to ``normalise(0.5 m + 0.5 v)``. The total is RepDistiller's README / script
``-r 1 -a 0 -b 0.8``: CE + 0.8 CRD; ``kd_weight=1`` is its "CRD+KD" (``-a 1``, T = 4).

CRD needs each training example's dataset index (`TrainState.index`, set by the loop) and
the training labels (`Learner.bind_data`, called by the loop before training), which size
the two banks (2 x N x 128 buffers, part of the weights so a run resumes exactly).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..base.errors import ConfigError
from ..base.registry import METHODS
from .base import TrainState
from .kd import Distill, _build, _shapes, register_kind

#: RepDistiller train_student.py: --feat_dim, --nce_k, --nce_t, --nce_m; README -b for CRD
FEAT_DIM, NCE_K, NCE_T, NCE_M, CRD_WEIGHT = 128, 16384, 0.07, 0.5, 0.8

register_kind("crd", taps=("pool",), weight=CRD_WEIGHT)


def contrast_sample(labels: torch.Tensor, index: torch.Tensor, k: int, modes: dict[int, str]) -> torch.Tensor:
    """(B, 1 + k): each example's own index, then k indices of examples of *other* classes
    drawn uniformly, without replacement unless its class leaves fewer than k (RepDistiller
    ``CIFAR100InstanceSample``, mode "exact"). `modes` caches, per k, whether no, every or
    some class leaves too few: it is fixed by the labels, so decided once (one host sync
    per run, not per step); only a mix of both kinds needs masked rows."""
    y = labels[index]
    other = (labels[None, :] != y[:, None]).float()
    mode = modes.get(k)
    if mode is None:
        counts = len(labels) - torch.bincount(labels)
        present = counts[torch.unique(labels)]
        mode = modes[k] = ("none" if bool((present >= k).all()) else
                           "all" if bool((present < k).all()) else "mixed")
    if mode != "mixed":
        neg = torch.multinomial(other, k, replacement=mode == "all")
    else:
        short = other.sum(1) < k
        neg = torch.empty(len(index), k, dtype=torch.long, device=index.device)
        for rows, replace in ((~short, False), (short, True)):
            if rows.any():
                neg[rows] = torch.multinomial(other[rows], k, replacement=replace)
    return torch.cat([index[:, None], neg], dim=1)


class ContrastMemory(nn.Module):
    """The two memory banks (student's, teacher's), the labels and the constants Z.

    Sized by `bind` (the training labels); a state dict of another size resizes the
    buffers first, so a trained learner loads without its data."""

    def __init__(self, feat_dim: int) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.register_buffer("memory_s", torch.zeros(0, feat_dim))
        self.register_buffer("memory_t", torch.zeros(0, feat_dim))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("z", torch.full((2,), -1.0))  # Z of the student / teacher scores; < 0: unset
        self._short_mode: dict[int, str] = {}  # k -> "none" | "all" | "mixed" (see `sample`)

    def bind(self, y_train: torch.Tensor) -> None:
        """Banks of N rows uniform in [-s, s], s = 1 / sqrt(feat_dim / 3) (memory.py)."""
        n, dev = len(y_train), self.memory_s.device
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.memory_s = torch.rand(n, self.feat_dim, device=dev).mul_(2 * stdv).add_(-stdv)
        self.memory_t = torch.rand(n, self.feat_dim, device=dev).mul_(2 * stdv).add_(-stdv)
        self.labels = y_train.to(dev, torch.long).clone()
        self.z = torch.full((2,), -1.0, device=dev)
        self._short_mode = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("memory_s", "memory_t", "labels"):
            if prefix + name in state_dict:
                src = state_dict[prefix + name]
                setattr(self, name, torch.empty_like(src, device=getattr(self, name).device))
        self._short_mode = {}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def n_data(self) -> int:
        return self.memory_s.shape[0]

    def sample(self, index: torch.Tensor, k: int) -> torch.Tensor:
        """(B, 1 + k): each example's own index, then k indices of other classes (`contrast_sample`)."""
        return contrast_sample(self.labels, index, k, self._short_mode)

    def scores(self, v_s: torch.Tensor, v_t: torch.Tensor, sample_idx: torch.Tensor, temperature: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Student anchors against the teacher bank and teacher anchors against the student
        bank, ``exp(m . v / T) / Z`` (B, 1 + K); Z fixed from the first call."""
        w_t = self.memory_t[sample_idx].detach()
        w_s = self.memory_s[sample_idx].detach()
        out_s = torch.exp(torch.bmm(w_t, v_s[:, :, None]).squeeze(2) / temperature)
        out_t = torch.exp(torch.bmm(w_s, v_t[:, :, None]).squeeze(2) / temperature)
        with torch.no_grad():
            first = torch.stack([out_s.mean(), out_t.mean()]) * self.n_data
            self.z.copy_(torch.where(self.z < 0, first, self.z))
        return out_s / self.z[0], out_t / self.z[1]

    @torch.no_grad()
    def update(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor, momentum: float) -> None:
        """Rows of the batch: ``normalise(momentum * m + (1 - momentum) * v)``."""
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            bank.index_copy_(0, index, F.normalize(bank[index] * momentum + v.detach() * (1 - momentum), dim=1))


class CRD(Distill):
    """Student + frozen teacher + embeddings and memory banks; CE + 0.8 CRD (+ kd_weight KD)."""

    def __init__(self, student, teacher, *, feat_dim: int = FEAT_DIM, nce_k: int = NCE_K, nce_t: float = NCE_T,
                 nce_m: float = NCE_M, kd_weight: float = 0.0, in_channels: int = 3, **options) -> None:
        super().__init__("crd", student, teacher, in_channels=in_channels, **options)
        self.nce_k, self.nce_t, self.nce_m, self.kd_weight = int(nce_k), float(nce_t), float(nce_m), float(kd_weight)
        c_s = _shapes(self.net, ("pool",), in_channels)["pool"][0]
        c_t = _shapes(self.teacher, ("pool",), in_channels)["pool"][0]
        self.adapters["embed_s"] = nn.Linear(c_s, feat_dim)
        self.adapters["embed_t"] = nn.Linear(c_t, feat_dim)
        self.memory = ContrastMemory(feat_dim)

    def bind_data(self, y_train: torch.Tensor) -> None:
        self.memory.bind(y_train)

    def crd_term(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor,
                 sample_idx: torch.Tensor | None = None) -> torch.Tensor:
        """CRDLoss.forward: embed, score against the banks, NCE both ways, update the banks."""
        if self.memory.n_data == 0:
            raise ConfigError("crd needs the training labels before training (Learner.bind_data, which "
                              "cooplib.engine.train.fit calls): train it through the loop")
        v_s = F.normalize(self.adapters["embed_s"](f_s.float().flatten(1)), dim=1)
        v_t = F.normalize(self.adapters["embed_t"](f_t.float().flatten(1)), dim=1)
        if sample_idx is None:
            sample_idx = self.memory.sample(index, self.nce_k)
        out_s, out_t = self.memory.scores(v_s, v_t, sample_idx, self.nce_t)
        loss = losses.crd_nce(out_s, self.memory.n_data) + losses.crd_nce(out_t, self.memory.n_data)
        self.memory.update(v_s, v_t, index, self.nce_m)
        return loss

    def distill_term(self, logits: torch.Tensor, y: torch.Tensor, state: TrainState) -> dict[str, torch.Tensor]:
        if state.index is None:
            raise ConfigError("crd needs each example's dataset index (TrainState.index), which "
                              "cooplib.engine.train.fit sets: train it through the loop")
        s, t = self._student_taps.features(), self._teacher_out
        terms = {"crd": self.crd_term(s["pool"], t["pool"], state.index)}
        if self.kd_weight > 0:
            terms["kd"] = losses.kd_kl(logits, t["logits"], self.temperature)
        return terms

    def _weight(self, term: str) -> float:
        return self.kd_weight if term == "kd" else self.weight


@METHODS.register("crd", ranges={"feat_dim": (1, None), "nce_k": (1, None), "nce_t": "(0, inf)",
                                 "nce_m": (0, 1), "kd_weight": (0, None)})
def build_crd(model: str, num_classes: int, in_channels: int = 3, *, teacher: str | None = None,
              convention: str = "repdistiller", weight: float | None = None, alpha: float = 0.5,
              label_smoothing: float | None = None, temperature: float = 4.0, warmup_epochs: int | None = None,
              feat_dim: int = FEAT_DIM, nce_k: int = NCE_K, nce_t: float = NCE_T, nce_m: float = NCE_M,
              kd_weight: float = 0.0) -> CRD:
    """Registry factory: CRD (``temperature`` is KD's, used when ``kd_weight`` > 0;
    ``warmup_epochs`` is FT's option, accepted by every kind)."""
    return _build("crd", model, num_classes, in_channels, teacher, cls=CRD, convention=convention, weight=weight,
                  alpha=alpha, label_smoothing=label_smoothing, temperature=temperature, warmup_epochs=warmup_epochs,
                  extra=dict(feat_dim=feat_dim, nce_k=nce_k, nce_t=nce_t, nce_m=nce_m, kd_weight=kd_weight))


__all__ = ["CRD", "ContrastMemory", "build_crd", "contrast_sample"]
