"""Loss terms shared by the Learners.

Conventions (book/methods.md): distillation is `T^2 * KL(teacher || student)` with the
teacher detached by the caller's choice, averaged over the batch, never over classes.
Losses are computed in float32 even under autocast, so bf16 logits cannot underflow.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy, computed in float32."""
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`T^2 * KL(softmax(teacher/T) || softmax(student/T))`, batch-mean.

    The teacher is used as given: pass `teacher.detach()` for one-way distillation.
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


# ---------------------------------------------------------------- offline distillation terms
#
# One function per method, each the RepDistiller implementation (HobbitLong/RepDistiller,
# distiller_zoo/*.py) restated on plain tensors, computed in float32 whatever the autocast:
# the relational terms (RKD, PKT) involve distances of nearly equal vectors, which bf16/fp16
# cannot resolve. Teacher tensors are used as given: the Learner passes them detached.
# The published weight of each term is applied by the Learner (cooplib.methods.distill).


def hint_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al. 2015) hint: mean squared error of the regressed student
    feature map and the teacher's (RepDistiller distiller_zoo/FitNet.py, `nn.MSELoss()`:
    the mean over every element)."""
    return F.mse_loss(student.float(), teacher.float())


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT's spatial attention: the channel mean of |f|^p, flattened and L2-normalised per
    sample (RepDistiller distiller_zoo/AT.py `at`, which raises f to p without abs: for
    p = 2 the same)."""
    return F.normalize(f.float().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017) for one pair of maps:
    mean over batch and positions of (at(s) - at(t))^2 (RepDistiller AT.py `at_loss`).
    Student and teacher maps must have the same spatial size."""
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


def factor_transfer(student_factor: torch.Tensor, teacher_factor: torch.Tensor) -> torch.Tensor:
    """Factor transfer (Kim et al. 2018), p = 1: mean |n(f_s) - n(f_t)| with n the per-sample
    L2 normalisation of the flattened factor (RepDistiller distiller_zoo/FT.py)."""
    s = F.normalize(student_factor.float().flatten(1), dim=1)
    t = F.normalize(teacher_factor.float().flatten(1), dim=1)
    return F.l1_loss(s, t)


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between the rows of `e`, in float32, diagonal exactly 0.

    The squared distances are clamped at `eps` before the square root (sqrt'(0) is
    infinite), and the diagonal is zeroed *after* the root by a multiplicative mask, so
    its (large) local derivative is multiplied by 0 and never reaches the gradient.
    """
    e = e.float()
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * e @ e.t()).clamp(min=eps)
    off = 1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype)
    return d2.sqrt() * off


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """Distances divided by their mean over the positive (off-diagonal) entries, the mean
    kept in the graph: a detached mean makes the loss depend on the embedding's scale,
    whose gradient then shrinks the embedding towards 0 (the collapse this avoids)."""
    d = pairwise_distances(e)
    return d / d[d > 0].mean()


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance term (Park et al. 2019): smooth L1 between mean-normalised distances."""
    with torch.no_grad():
        t = _normalised_distances(teacher)
    return F.smooth_l1_loss(_normalised_distances(student), t)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k for every triplet, flattened (RKD.py)."""
    diff = e.float()[None, :, :] - e.float()[:, None, :]
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle term: smooth L1 between the triplet angle cosines."""
    with torch.no_grad():
        t = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), t)


def rkd(student: torch.Tensor, teacher: torch.Tensor, w_dist: float = 25.0, w_angle: float = 50.0) -> torch.Tensor:
    """RKD = w_dist * distance + w_angle * angle on embeddings (N, D) (RepDistiller
    distiller_zoo/RKD.py defaults 25 and 50; RepDistiller then weights RKD by beta = 1).
    Scale-invariant in the student embedding, so its gradient is orthogonal to it."""
    student, teacher = student.flatten(1), teacher.flatten(1)
    return w_dist * rkd_distance(student, teacher) + w_angle * rkd_angle(student, teacher)


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a_i . b_j)^2 for the channel vectors of a (N, Ca, HW) and b (N, Cb, HW)."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Neuron selectivity transfer (Huang & Wang 2017): squared MMD with the polynomial
    kernel k(x, y) = (x . y)^2 between the L2-normalised channel activation maps of a
    pair of stages (RepDistiller distiller_zoo/NST.py). Spatial sizes must match."""
    s = F.normalize(student.float().flatten(2), dim=2)
    t = F.normalize(teacher.float().flatten(2), dim=2)
    return _poly_kernel(t, t).mean() - 2 * _poly_kernel(s, t).mean() + _poly_kernel(s, s).mean()


def pkt(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): KL between the row-
    normalised cosine-similarity kernels (shifted to [0, 1]) of the embeddings, averaged
    over all N^2 entries as RepDistiller distiller_zoo/PKT.py does (`torch.mean`, not a
    per-row sum: hence its large published weight, 30000)."""
    def kernel(e: torch.Tensor) -> torch.Tensor:
        e = e.float().flatten(1)
        e = e / (e.norm(dim=1, keepdim=True) + eps)
        k = (e @ e.t() + 1.0) / 2.0
        return k / k.sum(1, keepdim=True)

    s, t = kernel(student), kernel(teacher)
    return (t * torch.log((t + eps) / (s + eps))).mean()
