"""Optional backend: torchvision RAFT optical flow, chained frame to frame like ``dis_chain``.

RAFT weights are the user's input (nothing is downloaded): build the architecture with
``weights=None`` and load a local state dict::

    TrackerSettings(backend="raft", raft_model="raft_small", raft_weights="/models/raft_small.pth")

The file may hold the state dict itself or ``{"state_dict": ...}`` / ``{"model": ...}``. Frames are
scaled to [-1, 1] and padded to a multiple of 8 (RAFT's stride, at least 128 px); forward and backward flows of a
pair are computed in one batch. Occlusion comes from the same forward–backward check as ``dis_chain``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.tracking.base import DenseTracker, TrackerSettings
from pipeline.tracking.flow import chain_tracks

RAFT_MODELS = ("raft_small", "raft_large")
MIN_SIDE = 128  # RAFT's correlation pyramid needs feature maps of at least 16 (= 128 px / 8)


def load_raft(settings: TrackerSettings, random_weights: bool = False):
    """torchvision RAFT in eval mode on ``settings.device``, with the user's local weights.

    ``random_weights=True`` skips loading (for speed measurements only: the flow is meaningless).
    """
    import torch
    from torchvision.models import optical_flow

    if settings.raft_model not in RAFT_MODELS:
        raise ValueError(f"unknown raft_model {settings.raft_model!r}; choose one of {RAFT_MODELS}")
    model = getattr(optical_flow, settings.raft_model)(weights=None)
    if not random_weights:
        if not settings.raft_weights:
            raise ValueError(
                "the 'raft' tracker needs local RAFT weights: set TrackerSettings.raft_weights to a "
                f"{settings.raft_model} state-dict file (nothing is downloaded), or use backend='dis_layers'"
            )
        path = Path(settings.raft_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"RAFT weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        model.load_state_dict(state)
    return model.eval().to(settings.device)


class RaftPairs:
    """Forward and backward RAFT flows between consecutive frames (float32 (h, w, 2) each), on demand."""

    def __init__(self, model, frames: np.ndarray, device: str, iterations: int):
        import torch

        self.model, self.device, self.iterations = model, device, iterations
        h, w = frames.shape[1:3]
        self.size = (h, w)
        pad_h, pad_w = max(MIN_SIDE, h + (-h) % 8) - h, max(MIN_SIDE, w + (-w) % 8) - w
        images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        self.images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h), mode="replicate")

    def __call__(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        a, b = self.images[t], self.images[t + 1]
        with torch.inference_mode():
            flows = self.model(torch.stack([a, b]).to(self.device), torch.stack([b, a]).to(self.device),
                               num_flow_updates=self.iterations)[-1]
        h, w = self.size
        flows = flows[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy()
        return np.ascontiguousarray(flows[0]), np.ascontiguousarray(flows[1])


class RaftChainTracker(DenseTracker):
    """Chained torchvision RAFT flow with a forward–backward occlusion check (``backend="raft"``)."""

    name = "raft"

    def __init__(self, settings: TrackerSettings, random_weights: bool = False):
        super().__init__(settings)
        self.random_weights = random_weights
        self._model = None

    def _track_work(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        if self._model is None:
            self._model = load_raft(s, self.random_weights)
        pairs = RaftPairs(self._model, frames, s.device, s.raft_iters)
        xy, visible, alive = chain_tracks(pairs, queries, len(frames), frames.shape[1:3], s.fb_threshold, s.fb_relative)
        return xy, (alive if s.fb_sticky else visible)
