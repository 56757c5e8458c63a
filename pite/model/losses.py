"""Memory-lean losses for PiTe: a chunked, fused linear + cross-entropy and the masked L1 of the heads.

Cross-entropy without full logits
---------------------------------
A causal LM's loss is usually computed as ``cross_entropy(lm_head(hidden), labels)``, which materialises
(B, L, V) logits (plus their float32 copy and gradient): at L = 2048, V = 32000 that is 262 MB per
sample in float32, several times over. Here the caller first gathers only the N positions that carry a
label, and the projection is fused with the loss, chunk by chunk:

- :func:`fused_linear_cross_entropy` — a custom autograd Function. Its forward walks over chunks of
  ``chunk_size`` rows, computes the chunk's logits, its loss *and* its gradient with respect to the hidden
  states (and the weight, if that is trainable), then drops the logits. Backward only scales the stored
  gradients. Peak extra memory is one (chunk_size, V) float32 block instead of (N, V) several times.
- :func:`checkpointed_linear_cross_entropy` — the same computation as a loop of
  ``torch.utils.checkpoint`` calls around the head *module*. It recomputes each chunk's logits in
  backward. Use it when the weight cannot be read directly (a LoRA-wrapped ``lm_head``, DeepSpeed
  ZeRO-3 partitioned parameters, whose values exist only inside the module's forward hooks).

Both equal ``F.cross_entropy(hidden @ weight.T + bias, targets, label_smoothing=s, ignore_index=-100)``
and its gradients (see ``tests/test_losses.py``).

Label smoothing follows PyTorch: the target distribution is ``(1 - s) * onehot(y) + s / V``, so per row
``loss = logsumexp(z) - (1 - s) * z_y - (s / V) * sum_j z_j`` and
``dloss/dz = softmax(z) - (1 - s) * onehot(y) - s / V``.

Masked L1
---------
:func:`masked_l1` is the mean absolute error over the *valid coordinates*: a target point equal to
(-1, -1) (absent or invisible) is excluded, both of its coordinates. :func:`official_unmasked_l1` reproduces
the official code instead (every position, non-target positions filled with -1), without building dense
label tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
MISSING_POINT = -1.0


def _select_labelled(hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    """Drop rows whose target is ``ignore_index``. hidden (N, d), targets (N,) -> (M, d), (M,)."""
    if hidden.ndim != 2 or targets.ndim != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected hidden (N, d) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    keep = targets != ignore_index
    if not bool(keep.all()):
        hidden, targets = hidden[keep], targets[keep]
    return hidden, targets


def _check_classes(targets: torch.Tensor, vocab_size: int) -> None:
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab_size):
        bad = int(targets.min()) if int(targets.min()) < 0 else int(targets.max())
        raise ValueError(f"label {bad} is outside the vocabulary 0..{vocab_size - 1} (use -100 for no loss)")


def _chunk_loss_and_grad_logits(logits: torch.Tensor, targets: torch.Tensor, smoothing: float, need_grad: bool):
    """Per-chunk loss sum and d(loss sum)/d(logits), reusing the logits' memory.

    logits (C, V), overwritten in place; targets (C,) -> (0-dim loss sum, (C, V) gradient or None).
    """
    vocab = logits.shape[-1]
    loss = -(1.0 - smoothing) * logits.gather(1, targets[:, None]).squeeze(1)  # (C,)
    if smoothing:
        loss -= (smoothing / vocab) * logits.sum(dim=-1)
    peak = logits.amax(dim=-1, keepdim=True)  # (C, 1)
    probs = logits.sub_(peak).exp_()  # unnormalised softmax, in place: no second (C, V) buffer
    sum_exp = probs.sum(dim=-1)  # (C,)
    loss += peak.squeeze(1) + sum_exp.log()  # + logsumexp
    if not need_grad:
        return loss.sum(), None
    grad = probs.div_(sum_exp[:, None])  # softmax
    grad.scatter_add_(1, targets[:, None], torch.full_like(sum_exp[:, None], -(1.0 - smoothing)))
    if smoothing:
        grad.sub_(smoothing / vocab)
    return loss.sum(), grad


def auto_chunk_size(vocab_size: int, budget_elements: int = 2**25) -> int:
    """Rows per chunk so one (rows, V) float32 block stays near ``budget_elements`` (128 MiB by default).

    V = 32000 -> 1048 rows; V = 151936 (Qwen2) -> 220 rows; never below 64 or above 8192.
    """
    return max(64, min(8192, budget_elements // max(vocab_size, 1)))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients are computed together in forward, chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, smoothing, chunk_size, reduction, grad_flags):
        need_h, need_w, need_b = grad_flags
        need_any = need_h or need_w or need_b
        n = hidden.shape[0]
        denom = float(max(n, 1)) if reduction == "mean" else 1.0
        grad_hidden = torch.empty_like(hidden) if need_h else None
        acc = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 for float64 inputs
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, n, chunk_size):
            h = hidden[start : start + chunk_size]  # (C, d)
            logits = F.linear(h, weight, bias).to(acc)  # (C, V)
            chunk_targets = targets[start : start + chunk_size]
            loss_sum, grad_logits = _chunk_loss_and_grad_logits(logits, chunk_targets, smoothing, need_any)
            total += loss_sum
            if not need_any:
                continue
            grad_logits.div_(denom)
            if need_h:
                grad_hidden[start : start + chunk_size] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_weight.addmm_(grad_logits.t(), h.to(acc))
            if need_b:
                grad_bias += grad_logits.sum(0)
            del grad_logits, logits
        ctx.save_for_backward(
            grad_hidden,
            grad_weight.to(weight.dtype) if need_w else None,
            grad_bias.to(bias.dtype) if need_b else None,
        )
        return total / denom

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output
        out = [None] * 8
        if grad_hidden is not None:
            out[0] = grad_hidden * scale.to(grad_hidden.dtype)
        if grad_weight is not None:
            out[1] = grad_weight * scale.to(grad_weight.dtype)
        if grad_bias is not None:
            out[2] = grad_bias * scale.to(grad_bias.dtype)
        return tuple(out)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``targets`` without materialising all logits.

    Args:
        hidden: (N, d) hidden states of the positions to score (any float dtype).
        weight: (V, d) output projection (``lm_head.weight``).
        targets: (N,) int64 class ids; rows equal to ``ignore_index`` are dropped.
        bias: optional (V,).
        label_smoothing: PyTorch's smoothing ``s`` in [0, 1).
        chunk_size: rows projected at a time (default :func:`auto_chunk_size`); the extra memory is about one
            (chunk_size, V) float32 block, plus its bfloat16 copy for low-precision weights.
        reduction: ``"mean"`` over kept rows (0 when there are none) or ``"sum"``.

    Returns:
        0-dim float32 loss (float64 for float64 inputs). Gradients flow to ``hidden``, and to
        ``weight``/``bias`` when they require grad.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    hidden, targets = _select_labelled(hidden, targets, ignore_index)
    _check_classes(targets, weight.shape[0])
    grad_on = torch.is_grad_enabled()
    flags = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    chunk_size = chunk_size or auto_chunk_size(weight.shape[0])
    return _FusedLinearCrossEntropy.apply(
        hidden, weight, bias, targets, float(label_smoothing), int(chunk_size), reduction, flags
    )


def _chunk_ce_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets, reduction="sum", label_smoothing=smoothing)


def checkpointed_linear_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Module,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 256,
    reduction: str = "mean",
) -> torch.Tensor:
    """Same as :func:`fused_linear_cross_entropy`, but calls ``head`` (any module mapping (C, d) -> (C, V)) in
    checkpointed chunks, so only one chunk's logits are alive at a time and they are recomputed in backward.
    It keeps about 4 (chunk_size, V) float32 blocks alive in backward (logits, log-softmax and their grads),
    so its default chunk is smaller than the fused one's.

    hidden (N, d), targets (N,) -> 0-dim float32 loss.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    hidden, targets = _select_labelled(hidden, targets, ignore_index)
    total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    use_ckpt = torch.is_grad_enabled()
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if use_ckpt:
            # determinism_check="none": under ZeRO-3 the recompute's hooks re-gather and release
            # lm_head.weight, so the recomputed tensors' metadata legitimately differs.
            total = total + checkpoint(_chunk_ce_sum, head, h, y, float(label_smoothing), use_reentrant=False,
                                       determinism_check="none")
        else:
            total = total + _chunk_ce_sum(head, h, y, float(label_smoothing))
    if reduction == "mean":
        total = total / max(hidden.shape[0], 1)
    return total


def valid_point_mask(target: torch.Tensor) -> torch.Tensor:
    """(..., 2) target points -> (...) bool, False where the point is (-1, -1) (absent or invisible)."""
    return ~((target[..., 0] == MISSING_POINT) & (target[..., 1] == MISSING_POINT))


def masked_l1(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean |pred - target| over the coordinates of valid target points.

    Args:
        pred: (K, ..., 2) head outputs at the target positions, e.g. (K, 2) or (K, P, N, 2).
        target: same shape; points equal to (-1, -1) are excluded (both coordinates).

    Returns:
        (0-dim float32 loss, number of valid points). With no valid point the loss is ``pred.sum() * 0``
        (zero, but still connected to the graph so every rank runs the same backward).

    The paper's stage-2 term is ``lambda / (P*N) * sum_{p,n} L1``: an average over a trajectory's P*N points.
    Masking replaces P*N by the number of valid points and averages over the coordinates as well, i.e.
    ``sum |pred - target| / (2 * valid points)``, pooled over all target tokens in the batch.
    """
    if pred.shape != target.shape or pred.shape[-1] != 2:
        raise ValueError(
            f"pred and target must share a (..., 2) shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    valid = valid_point_mask(target)  # (K, ...)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return pred.sum() * 0.0, 0
    diff = (pred.float() - target.float()).abs().sum(-1)  # (K, ...) L1 of each point
    return diff[valid].sum() / (2 * n_valid), n_valid


def official_unmasked_l1(
    pred_all: torch.Tensor, target_rows: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """The official PiTe head loss: mean |pred - label| over *every* position and coordinate, where the label
    is -1 at every non-target position and the (unmasked) target at target positions.

    Computed without a dense label tensor: ``sum |pred + 1|`` over all positions, corrected at the K
    target positions to ``|pred - target|``.

    Args:
        pred_all: (M, D) head outputs at every scored position (flattened coordinates, D = 2 or P*N*2).
        target_rows: (K,) rows of ``pred_all`` that carry a target.
        target: (K, D) or (K, ..., 2) targets at those rows (-1 points are *not* excluded).

    Returns:
        0-dim float32 loss.
    """
    pred_all = pred_all.float()
    target = target.reshape(target.shape[0], -1).float()
    if target.shape[1] != pred_all.shape[1]:
        raise ValueError(f"target has {target.shape[1]} values per row, the head gives {pred_all.shape[1]}")
    total = (pred_all + 1.0).abs().sum()
    at_targets = pred_all[target_rows]  # (K, D)
    total = total - (at_targets + 1.0).abs().sum() + (at_targets - target).abs().sum()
    return total / pred_all.numel()
