"""PiTe's two prediction heads on the LLM's hidden states.

- :class:`LocalizationHead` (phi, stage 1): Linear(d, 2) -> an (x, y) per token.
- :class:`TrajectoryHead` (rho, stage 2): Linear(d, P*N*2) -> (P, N, 2) key trajectories per token
  (P = 3 trajectories, N = 100 frames).

Both are *shifted* like the LM loss: the hidden state at position t predicts the target of token t+1.
The wrapper evaluates them only at positions that carry a target.

rho is initialised from phi by :func:`init_trajectory_from_localization`: phi's weight and bias are repeated
P*N times, so at initialisation every point of every trajectory equals phi's (x, y). The paper's ablation
without this initialisation drops grounding R@0.3 from 30.4 to 22.8.
"""

from __future__ import annotations

import torch
from torch import nn


class LocalizationHead(nn.Linear):
    """phi = Linear(d, 2). hidden (..., d) -> (..., 2) normalised (x, y)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.to(self.weight.dtype))


class TrajectoryHead(nn.Linear):
    """rho = Linear(d, P*N*2). hidden (..., d) -> (..., P, N, 2) normalised (x, y) per trajectory and frame.

    Output units are ordered (p, n, coordinate), so unit ``(p * N + n) * 2 + c`` is coordinate c of point n
    of trajectory p.
    """

    def __init__(self, hidden_size: int, num_trajectories: int = 3, num_frames: int = 100) -> None:
        super().__init__(hidden_size, num_trajectories * num_frames * 2)
        self.num_trajectories = num_trajectories
        self.num_frames = num_frames

    def forward_flat(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., d) -> (..., P*N*2) without reshaping."""
        return super().forward(hidden.to(self.weight.dtype))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.forward_flat(hidden).unflatten(-1, (self.num_trajectories, self.num_frames, 2))


@torch.no_grad()
def init_trajectory_from_localization(traj_head: TrajectoryHead, loc_head: LocalizationHead) -> None:
    """Set rho's weight to phi's weight repeated P*N times along the output axis, and the same for the bias.

    rho.weight (P*N*2, d) = phi.weight (2, d) tiled P*N times; rho.bias (P*N*2,) = phi.bias (2,) tiled.
    """
    if traj_head.in_features != loc_head.in_features:
        raise ValueError(f"heads disagree on hidden size: {traj_head.in_features} vs {loc_head.in_features}")
    repeats = traj_head.out_features // loc_head.out_features
    traj_head.weight.copy_(loc_head.weight.repeat(repeats, 1))
    traj_head.bias.copy_(loc_head.bias.repeat(repeats))
