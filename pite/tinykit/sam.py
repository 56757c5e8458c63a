"""Tiny segment-anything model: Meta's ``Sam`` modules with small dimensions, 128-px input.

Writes ``sam.pth`` (a plain state dict) and ``sam_config.json`` (a :class:`pite.models.SamArch`);
:func:`pite.models.load_sam` rebuilds it with the same builder it uses for the release
checkpoints. ``SamPredictor.set_image`` on it takes milliseconds on CPU, and masks come back at
the input image's size like the real model's.
"""

from __future__ import annotations

from pathlib import Path

from pite.models import SAM_CONFIG, SAM_WEIGHTS, SamArch, build_sam

TINY_SAM = SamArch(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=128,  # image embedding 8 x 8 with 16-px patches
    patch_size=16,
    window_size=4,
    prompt_embed_dim=32,
    mask_in_chans=4,
    decoder_depth=2,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)


def build(out_dir: Path) -> None:
    """Write ``sam.pth`` and ``sam_config.json`` into ``out_dir``."""
    import torch

    torch.manual_seed(0)
    sam = build_sam(TINY_SAM)
    torch.save(sam.state_dict(), Path(out_dir) / SAM_WEIGHTS)
    (Path(out_dir) / SAM_CONFIG).write_text(TINY_SAM.to_json())
