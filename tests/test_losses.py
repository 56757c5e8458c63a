"""Exactness of the memory-lean losses against the plain PyTorch formulas."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pite.model.losses import (
    checkpointed_linear_cross_entropy,
    fused_linear_cross_entropy,
    masked_l1,
    official_unmasked_l1,
)


def _problem(n=11, d=8, vocab=37, with_bias=True, ignored=(2, 7)):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[list(ignored)] = -100
    return hidden, weight, bias, targets


def _reference(hidden, weight, bias, targets, smoothing, reduction="mean"):
    logits = F.linear(hidden, weight, bias)  # (N, V): the full logits the fused version avoids
    return F.cross_entropy(logits, targets, ignore_index=-100, label_smoothing=smoothing, reduction=reduction)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_ce_equals_full_ce_and_grads(smoothing, with_bias, reduction):
    hidden, weight, bias, targets = _problem(with_bias=with_bias)
    ref = _reference(hidden, weight, bias, targets, smoothing, reduction)
    fused = fused_linear_cross_entropy(
        hidden, weight, targets, bias, label_smoothing=smoothing, chunk_size=3, reduction=reduction
    )
    torch.testing.assert_close(fused.double(), ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(_grads(fused, [hidden, weight, bias]), _grads(ref, [hidden, weight, bias])):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_checkpointed_ce_equals_full_ce_and_grads(smoothing):
    hidden, weight, bias, targets = _problem()
    head = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    ref = _reference(hidden, head.weight, head.bias, targets, smoothing)
    got = checkpointed_linear_cross_entropy(hidden, head, targets, label_smoothing=smoothing, chunk_size=4)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    params = [hidden, head.weight, head.bias]
    for g, w in zip(_grads(got, params), _grads(ref, params)):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-8)


def test_fused_ce_frozen_weight_and_no_grad_mode():
    hidden, weight, _, targets = _problem(with_bias=False)
    weight.requires_grad_(False)
    loss = fused_linear_cross_entropy(hidden, weight, targets, chunk_size=5)
    loss.backward()
    assert hidden.grad is not None and weight.grad is None
    with torch.no_grad():
        value = fused_linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(value.double(), _reference(hidden, weight, None, targets, 0.0).detach())


def test_fused_ce_with_no_labelled_rows_is_zero():
    hidden, weight, _, targets = _problem(with_bias=False)
    loss = fused_linear_cross_entropy(hidden, weight, torch.full_like(targets, -100))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(hidden.grad.abs().sum()) == 0.0


def test_fused_ce_bfloat16_close_to_float32():
    hidden, weight, _, targets = _problem(with_bias=False)
    ref = _reference(hidden.float(), weight.float(), None, targets, 0.1)
    got = fused_linear_cross_entropy(hidden.bfloat16(), weight.bfloat16(), targets, label_smoothing=0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref.detach(), rtol=2e-2, atol=2e-2)


def test_masked_l1_ignores_missing_points():
    target = torch.rand(4, 3, 5, 2)
    target[0, 1, 2] = -1.0  # an invisible point
    target[3] = -1.0  # a token whose trajectories are all absent
    pred = torch.rand(4, 3, 5, 2, requires_grad=True)
    loss, n_valid = masked_l1(pred, target)
    valid = ~((target[..., 0] == -1) & (target[..., 1] == -1))
    assert n_valid == int(valid.sum()) == 3 * 3 * 5 - 1
    torch.testing.assert_close(loss, (pred - target).abs()[valid].mean())
    loss.backward()
    assert float(pred.grad[0, 1, 2].abs().sum()) == 0.0 and float(pred.grad[3].abs().sum()) == 0.0
    moved = pred.detach().clone()
    moved[0, 1, 2] += 5.0
    moved[3] -= 3.0
    torch.testing.assert_close(masked_l1(moved, target)[0], loss.detach())


def test_masked_l1_keeps_points_with_one_negative_coordinate():
    pred, target = torch.zeros(1, 2), torch.tensor([[-1.0, 0.5]])
    assert masked_l1(pred, target) == (pytest.approx(0.75), 1)


def test_masked_l1_without_valid_points_is_connected_zero():
    pred = torch.rand(2, 2, requires_grad=True)
    loss, n = masked_l1(pred, -torch.ones(2, 2))
    loss.backward()
    assert n == 0 and float(loss.detach()) == 0.0 and pred.grad is not None


def test_official_unmasked_l1_equals_dense_reference():
    pred_all = torch.randn(10, 6, requires_grad=True)
    rows = torch.tensor([1, 4, 8])
    target = torch.rand(3, 3, 1, 2)
    target[1, 0] = -1.0  # not masked in the official loss
    dense = -torch.ones(10, 6)
    dense[rows] = target.reshape(3, 6)
    want = (pred_all - dense).abs().mean()
    got = official_unmasked_l1(pred_all, rows, target)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, pred_all)[0], torch.autograd.grad(want, pred_all)[0])


def test_labels_outside_the_vocabulary_are_a_clear_error():
    hidden, weight, _, targets = _problem(with_bias=False)
    targets[0] = -200
    with pytest.raises(ValueError, match="label -200 is outside the vocabulary"):
        fused_linear_cross_entropy(hidden, weight, targets)
