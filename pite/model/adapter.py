"""The vision adapter: one linear layer from CLIP's projected frame embedding to the LLM's hidden size.

PiTe feeds CLIP ViT-L/14's ``image_embeds`` (768-d, one per frame, 100 frames) through this layer and
splices the result into the LLM's token embeddings at the ``<video>`` positions (see ``pite.model.pite``).
"""

from __future__ import annotations

import torch
from torch import nn


class VisionAdapter(nn.Linear):
    """Linear(in_dim, llm_dim).

    A plain ``nn.Linear`` subclass, so its state dict is just ``weight`` (llm_dim, in_dim) and ``bias`` (llm_dim,).

    Args:
        in_dim: size of one frame feature (768 for CLIP ViT-L/14; smaller for tiny test CLIPs).
        llm_dim: hidden size of the language model.
    """

    def __init__(self, in_dim: int, llm_dim: int) -> None:
        super().__init__(in_dim, llm_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (..., in_dim) -> (..., llm_dim), computed in the adapter's dtype."""
        if frames.shape[-1] != self.in_features:
            raise ValueError(f"video features have size {frames.shape[-1]}, the adapter expects {self.in_features}")
        return super().forward(frames.to(self.weight.dtype))
