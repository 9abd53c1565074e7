"""Optimiser configs nerfstudio lacks: AdamW, which LRM and OpenLRM train with (Hong et al. 2023, §4.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from nerfstudio.engine.optimizers import OptimizerConfig


@dataclass
class AdamWOptimizerConfig(OptimizerConfig):
    """AdamW with decoupled weight decay; `max_norm` (inherited) clips each param group's gradient norm."""

    _target: type = torch.optim.AdamW
    weight_decay: float = 0.05
    """Decoupled weight decay."""
    betas: tuple[float, float] = field(default_factory=lambda: (0.9, 0.95))
    """Adam betas (the paper's 0.9, 0.95)."""
