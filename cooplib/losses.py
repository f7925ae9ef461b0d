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


def match_spatial(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two maps at the smaller spatial size: the larger one adaptive-average-pooled
    down, as RepDistiller's AT, NST and FT losses do before comparing (HobbitLong/
    RepDistiller@b84f547, distiller_zoo/AT.py ``at_loss``, NST.py ``nst_loss``, FT.py
    ``factor_loss``; they pool to (H, H) of the square maps, here (H, W))."""
    (hs, ws), (ht, wt) = student.shape[2:], teacher.shape[2:]
    if (hs, ws) == (ht, wt):
        return student, teacher
    size = (min(hs, ht), min(ws, wt))
    if (hs, ws) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if (ht, wt) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT's spatial attention: the channel mean of f^p, flattened and L2-normalised per
    sample (RepDistiller distiller_zoo/AT.py ``at``, which raises f to p without abs: for
    p = 2 the same as |f|^p)."""
    return F.normalize(f.float().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017) for one pair of maps:
    mean over batch and positions of (at(s) - at(t))^2, the larger map pooled to the
    smaller first (RepDistiller@b84f547 distiller_zoo/AT.py ``at_loss``)."""
    student, teacher = match_spatial(student.float(), teacher.float())
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


#: whose factor-transfer loss `factor_transfer` computes (see its docstring)
FT_CONVENTIONS = ("repdistiller", "torchdistill")


def factor_transfer(student_factor: torch.Tensor, teacher_factor: torch.Tensor,
                    convention: str = "repdistiller") -> torch.Tensor:
    """Factor transfer (Kim et al. 2018), p = 1: mean |n(F_s) - n(F_t)| over batch and entries.

    - ``"repdistiller"`` (HobbitLong/RepDistiller@b84f547 distiller_zoo/FT.py, p1 = 2,
      p2 = 1): n(F) is the per-sample L2-normalised channel mean of F^2 (an attention
      map of the factor), after pooling the larger factor to the smaller size;
    - ``"torchdistill"`` (yoshitomo-matsubara/torchdistill@3e4373c
      torchdistill/losses/mid_level.py ``FTLoss``, p = 1, as the FT authors' code): n(F)
      is the per-sample L2-normalised flattened factor; the shapes must be equal.
    """
    if convention == "repdistiller":
        s, t = match_spatial(student_factor.float(), teacher_factor.float())
        return (attention_map(s, 2.0) - attention_map(t, 2.0)).abs().mean()
    if convention == "torchdistill":
        s = F.normalize(student_factor.float().flatten(1), dim=1)
        t = F.normalize(teacher_factor.float().flatten(1), dim=1)
        return F.l1_loss(s, t)
    raise ValueError(f"factor transfer convention must be one of {FT_CONVENTIONS}, got {convention!r}")


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
    pair of stages, the larger map pooled to the smaller first (RepDistiller@b84f547
    distiller_zoo/NST.py ``nst_loss``, full_loss)."""
    student, teacher = match_spatial(student.float(), teacher.float())
    s = F.normalize(student.flatten(2), dim=2)
    t = F.normalize(teacher.flatten(2), dim=2)
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


def dkd(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, beta: float = 8.0,
        temperature: float = 4.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): alpha TCKD + beta NCKD, each T^2 KL batch-mean
    (megvii-research/mdistiller@a08d46f mdistiller/distillers/DKD.py ``dkd_loss``).

    TCKD is the KL of the binary (target, all non-targets) probabilities; NCKD the KL of
    the distributions over the non-target classes, the target logit pushed out of the
    softmax by subtracting 1000 from logit/T, as mdistiller does (not -inf).
    """
    t = float(temperature)
    zs, zt = student.float() / t, teacher.float() / t
    gt = F.one_hot(y, zs.shape[1]).to(torch.bool)

    def binary(p: torch.Tensor) -> torch.Tensor:
        target = (p * gt).sum(1, keepdim=True)
        return torch.cat([target, (p * ~gt).sum(1, keepdim=True)], dim=1)

    b_s, b_t = binary(F.softmax(zs, dim=1)), binary(F.softmax(zt, dim=1))
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * t * t / len(y)
    nckd = F.kl_div(F.log_softmax(zs - 1000.0 * gt, dim=1), F.softmax(zt - 1000.0 * gt, dim=1),
                    reduction="sum") * t * t / len(y)
    return alpha * tckd + beta * nckd


def crd_nce(scores: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss (Tian et al. 2020, eq. 18) on the memory scores (N, 1 + K), the
    positive first: -[sum log h(pos) + sum log(1 - h(neg))] / N with
    h(x) = x / (x + K / n_data) (HobbitLong/RepDistiller@b84f547 crd/criterion.py
    ``ContrastLoss``, its eps 1e-7)."""
    scores = scores.float()
    m = scores.shape[1] - 1
    noise = m / float(n_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]
