import math

import torch

from cooplib import losses


def test_kd_kl_matches_hand_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    T = 3.0
    expected = 0.0
    for i in range(5):
        ps = [math.exp(v / T) for v in s[i].tolist()]
        pt = [math.exp(v / T) for v in t[i].tolist()]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        expected += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    expected = T * T * expected / 5  # batch-mean, not class-mean
    assert math.isclose(losses.kd_kl(s, t, T).item(), expected, rel_tol=1e-5)


def test_kd_kl_is_zero_for_equal_logits_and_gradient_only_to_student():
    s = torch.randn(3, 4, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    loss = losses.kd_kl(s, t.detach(), 2.0)
    assert abs(loss.item()) < 1e-6
    (losses.kd_kl(s, t.detach() + 1 * torch.eye(3, 4), 2.0)).backward()
    assert s.grad is not None and t.grad is None


def test_cross_entropy_is_float32_under_bf16_logits():
    logits = torch.randn(4, 10).bfloat16()
    y = torch.tensor([0, 1, 2, 3])
    out = losses.cross_entropy(logits, y)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.nn.functional.cross_entropy(logits.float(), y))
