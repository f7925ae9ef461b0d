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
