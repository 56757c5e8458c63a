"""Tiny CLIP vision tower: ``CLIPVisionModelWithProjection`` on 32-px images plus its processor.

It stands in for ``openai/clip-vit-large-patch14`` (224 px, ``image_embeds`` of 768). The
preprocessing is the real one (resize shortest edge, centre crop, CLIP mean/std), only smaller:
frames come out as (B, 3, 32, 32) and ``image_embeds`` as (B, 32).
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
PROJECTION_DIM = 32

# OpenAI CLIP normalisation constants (the real processor's values).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build(out_dir: Path) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` into ``out_dir``."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=PROJECTION_DIM,
        hidden_act="quick_gelu",
    )
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(out_dir)
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    processor.save_pretrained(out_dir)
