"""MCL-OKD: multi-view contrastive learning for online knowledge distillation (Yang, An,
Xu, ICASSP 2021), as its official code computes it (winycg/MCL-OKD at
c15a0fdb22940d19e47a526545bdebd57b232aa8: ``main_cifar_mcl_okd.py``, ``mcl/criterion.py``,
``mcl/memory.py``, ``models/mcl_okd_resnet.py``).

m peers over a shared ``stem`` + ``layer1`` (`cooplib.models.shared_trunk`,
``sharing="layer1"``: one ``layer2`` + ``layer3`` + ``pool`` + ``fc`` per peer, no
gradient rescaling). Each peer's pooled feature is embedded to 128 dimensions (a linear
map + L2 normalisation, trained with the network, not deployed) and every peer keeps a
memory bank of one normalised embedding per training example. Loss, batch-mean::

    gamma * sum_i CE(z_i, y) + alpha * T^2 KL(softmax(mean_i z_i / T) || softmax(z_0 / T))
      + beta * sum_{i != j} NCE(exp(M_i[s] . v_j / T_nce) / Z_ij)

- only one peer distils from the peers' (detached) mean, the reference's last branch
  ``logits[-1]``; here it is ``branch0``, first so that it is the deployed network and
  initialised as ``models.build`` would be (the others are ``branch1 ..``);
- s = the example's own index and ``nce_k`` indices of examples of other classes
  (`crd.contrast_sample`, the reference's ``CIFAR100InstanceSample`` "exact" mode);
  M_i[s] are peer i's bank rows (detached), v_j peer j's embedding, each ordered pair of
  peers once in each direction (``memory.py``: i < j, both ways);
- Z_ij = n_data * the mean of that pair's scores *of this batch* (recomputed each step,
  unlike CRD's constant from the first batch; here without the reference's ``.item()``,
  so no host sync); NCE is CRD's loss (`cooplib.losses.crd_nce`);
- then every peer's bank rows of the batch move to ``normalise(0.5 M + 0.5 v)``.

Defaults are the reference's: T = 3, gamma = alpha = 1, beta = 0.025, 128 dimensions,
T_nce = 0.1, momentum 0.5, 4 peers; ``nce_k`` = 256 is its README's command for ResNet-32
and ResNet-110 (the script's own default, 16384, is what the README uses for VGG-16 and
HCGNet). Its training recipe (lr 0.05, batch 64, one cosine period) is a profile's
business, not this Learner's. The memory banks are buffers sized by the training labels
(`bind_data`), so a run resumes exactly.

Heads: ``branch0 .. branch{m-1}`` and ``ensemble`` (the mean of all peers' logits: the
teacher and the reference's reported ensemble). Loss parts: ``ce/branches``,
``kl/branch0``, ``contrast`` (each already weighted).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..base.errors import ConfigError
from ..base.registry import METHODS
from ..models.shared_trunk import SharedTrunkNet
from .base import TrainState
from .crd import contrast_sample
from .one import BranchLearner

#: winycg/MCL-OKD main_cifar_mcl_okd.py defaults (--kd_T, --gamma, --alpha, --beta,
#: --feat-dim, --nce_t, --nce_m, --num-branches) and its README's --nce_k for ResNet-32
TEMPERATURE, GAMMA, ALPHA, BETA = 3.0, 1.0, 1.0, 0.025
FEAT_DIM, NCE_K, NCE_T, NCE_M, PEERS = 128, 256, 0.1, 0.5, 4


def pair_contrast(v: torch.Tensor, memory: torch.Tensor, sample_idx: torch.Tensor, temperature: float,
                  n_data: int) -> torch.Tensor:
    """Sum over ordered pairs i != j of ``crd_nce(exp(M_i[s] . v_j / T) / Z_ij)``.

    ``v`` (m, B, D) embeddings, ``memory`` (m, N, D) banks, ``sample_idx`` (B, 1 + K)."""
    m, b = v.shape[:2]
    rows = memory[:, sample_idx].detach()  # (m, B, 1 + K, D)
    scores = torch.exp(torch.einsum("ibkd,jbd->ijbk", rows, v.float()) / temperature)  # (m, m, B, 1 + K)
    pairs = ~torch.eye(m, dtype=torch.bool, device=v.device)
    scores = scores[pairs]  # (m (m - 1), B, 1 + K), row i then column j
    z = scores.mean(dim=(1, 2), keepdim=True).detach() * n_data
    flat = (scores / z).flatten(0, 1)
    # crd_nce divides by its rows (pairs x B); each pair's loss divides by B
    return losses.crd_nce(flat, n_data) * scores.shape[0]


class MCLOKD(BranchLearner):
    """m peers on a shared stem + layer1, one distilled from their mean, contrastive banks."""

    method = "mcl_okd"

    def __init__(self, net: SharedTrunkNet, *, temperature: float = TEMPERATURE, gamma: float = GAMMA,
                 alpha: float = ALPHA, beta: float = BETA, feat_dim: int = FEAT_DIM, nce_k: int = NCE_K,
                 nce_t: float = NCE_T, nce_m: float = NCE_M) -> None:
        super().__init__()
        if net.num_branches < 2:
            raise ValueError(f"MCL-OKD needs at least 2 peers, got {net.num_branches}")
        self.net = net
        self.temperature, self.gamma, self.alpha, self.beta = float(temperature), float(gamma), float(alpha), float(beta)
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = int(feat_dim), int(nce_k), float(nce_t), float(nce_m)
        self.embed = nn.ModuleList(nn.Linear(net.feature_dim, self.feat_dim) for _ in range(net.num_branches))
        self.register_buffer("memory", torch.zeros(net.num_branches, 0, self.feat_dim))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self._modes: dict[int, str] = {}
        self._features: torch.Tensor | None = None

    def bind_data(self, y_train: torch.Tensor) -> None:
        """Banks of N rows uniform in [-s, s], s = 1 / sqrt(feat_dim / 3) (memory.py)."""
        dev, stdv = self.memory.device, 1.0 / math.sqrt(self.feat_dim / 3)
        self.memory = torch.rand(self.net.num_branches, len(y_train), self.feat_dim, device=dev).mul_(2 * stdv).add_(-stdv)
        self.labels = y_train.to(dev, torch.long).clone()
        self._modes = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("memory", "labels"):  # banks of another training set's size
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        self._modes = {}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z, f = self.net.forward_features(x)  # (m, B, C), (m, B, D)
        self._features = f  # kept (in the graph) for `loss`
        heads = {h: zi for h, zi in zip(self.branch_heads, z.unbind(0))}
        heads["ensemble"] = z.mean(0)
        return heads

    def embeddings(self, f: torch.Tensor) -> torch.Tensor:
        """(m, B, D) pooled features -> (m, B, feat_dim) normalised embeddings."""
        return torch.stack([F.normalize(e(fi.float()), dim=1) for e, fi in zip(self.embed, f.unbind(0))])

    def loss(self, heads, y, state: TrainState):
        if self._features is None:
            raise RuntimeError("MCLOKD.loss needs the features of the forward pass that made `heads`: call the "
                               "learner on the batch first")
        if self.memory.shape[1] == 0:
            raise ConfigError("mcl_okd needs the training labels before training (Learner.bind_data, which "
                              "cooplib.engine.train.fit calls): train it through the loop")
        if state.index is None:
            raise ConfigError("mcl_okd needs each example's dataset index (TrainState.index), which "
                              "cooplib.engine.train.fit sets: train it through the loop")
        v = self.embeddings(self._features)
        self._features = None
        sample_idx = contrast_sample(self.labels, state.index, self.nce_k, self._modes)
        parts = {
            "ce/branches": self.gamma * sum(losses.cross_entropy(heads[h], y) for h in self.branch_heads),
            "kl/branch0": self.alpha * losses.kd_kl(heads["branch0"], heads["ensemble"].detach(), self.temperature),
            "contrast": self.beta * pair_contrast(v, self.memory, sample_idx, self.nce_t, self.memory.shape[1]),
        }
        with torch.no_grad():
            rows = self.memory[:, state.index] * self.nce_m + v.detach() * (1 - self.nce_m)
            self.memory[:, state.index] = F.normalize(rows, dim=2)
        return torch.stack(list(parts.values())).sum(), parts

    def diagnostics(self, heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._features = None  # evaluation computes no loss
        return super().diagnostics(heads)


@METHODS.register(
    "mcl_okd",
    ranges={"branches": (2, None), "temperature": "(0, inf)", "gamma": (0, None), "alpha": (0, None),
            "beta": (0, None), "feat_dim": (1, None), "nce_k": (1, None), "nce_t": "(0, inf)", "nce_m": (0, 1)},
)
def build_mcl_okd(model: str, num_classes: int, in_channels: int = 3, *, branches: int = PEERS,
                  temperature: float = TEMPERATURE, gamma: float = GAMMA, alpha: float = ALPHA, beta: float = BETA,
                  feat_dim: int = FEAT_DIM, nce_k: int = NCE_K, nce_t: float = NCE_T, nce_m: float = NCE_M) -> MCLOKD:
    """Registry factory: MCL-OKD with ``branches`` peers (4, as the reference) on the
    backbone ``model`` (a CIFAR ResNet as the reference uses, or any staged backbone)."""
    net = SharedTrunkNet(model, num_classes, in_channels, branches=branches, sharing="layer1", bpscale=False)
    return MCLOKD(net, temperature=temperature, gamma=gamma, alpha=alpha, beta=beta, feat_dim=feat_dim,
                  nce_k=nce_k, nce_t=nce_t, nce_m=nce_m)


__all__ = ["MCLOKD", "build_mcl_okd", "pair_contrast"]
