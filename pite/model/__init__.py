"""PiTe's model: a vision adapter and two heads composed around any Hugging Face causal LM.

- ``adapter.py``  VisionAdapter: Linear(768 -> d).
- ``heads.py``    LocalizationHead phi, TrajectoryHead rho, init_trajectory_from_localization.
- ``losses.py``   chunked fused linear cross-entropy, masked L1, the official unmasked L1.
- ``packing.py``  packed rows: position ids, sequence ids, first-fit packing.
- ``pite.py``     PiTeModel (splicing, losses, generation), LossSettings, PiTeOutput.
- ``build.py``    PiTeSettings, assemble_pite, build_pite, set_trainable.
"""

from pite.model.adapter import VisionAdapter
from pite.model.build import PiTeSettings, assemble_pite, build_pite, set_trainable
from pite.model.heads import LocalizationHead, TrajectoryHead, init_trajectory_from_localization
from pite.model.losses import (
    checkpointed_linear_cross_entropy,
    fused_linear_cross_entropy,
    masked_l1,
    official_unmasked_l1,
)
from pite.model.pite import LossSettings, PiTeModel, PiTeOutput

__all__ = [
    "LocalizationHead",
    "LossSettings",
    "PiTeModel",
    "PiTeOutput",
    "PiTeSettings",
    "TrajectoryHead",
    "VisionAdapter",
    "assemble_pite",
    "build_pite",
    "checkpointed_linear_cross_entropy",
    "fused_linear_cross_entropy",
    "init_trajectory_from_localization",
    "masked_l1",
    "official_unmasked_l1",
    "set_trainable",
]
