"""How a model's source image is prepared: its input contract, saved with its weights.

A model trained on grey 512² sources with the object at 0.85 of the side (TripoSR) gives worse results on white
256² ones, and no error says so. So these settings belong to the model (`LRMModelConfig.processor`), like
transformers' image processors, and travel in its weights file (io/weights.py), where the presets of the released
models set them. `ProcessorConfig.prepare` is the one place a source image is composited and resized: training
sources, `lrm-eval`, `lrm-reconstruct` and viewer uploads all go through it (photos are recentred first, in
data/image_preprocess.py); the encoder normalises the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

SourceResize = Literal["bilinear_antialias", "bicubic_align_corners"]


@dataclass
class ProcessorConfig:
    """Source-image preparation: resolution, background, resize mode and the object's size in a photo."""

    resolution: int = 64
    """Side of the square source image fed to the encoder."""
    background: tuple[float, float, float] | None = None
    """Background of every source image (training sources, photos, viewer uploads), RGB in [0, 1]; None: the
    targets' background. TripoSR's inputs are on grey 0.5."""
    resize: SourceResize = "bilinear_antialias"
    """How source images are resized to `resolution`: bilinear antialiased (LRM, TripoSR) or bicubic with
    align_corners (OpenLRM)."""
    foreground_ratio: float = 0.85
    """Object size / image side after recentring a photo (image_preprocess)."""

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if not 0.0 < self.foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in (0, 1], got {self.foreground_ratio}")
        if self.background is not None and not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"background must be RGB in [0, 1], got {self.background}")

    def prepare(
        self, rgba: Float[Tensor, "4 H W"], background: Sequence[float] | None = None
    ) -> tuple[Float[Tensor, "3 S S"], Float[Tensor, "1 S S"]]:
        """Straight-alpha RGBA in [0, 1] -> (RGB on the background, alpha), both resized to `resolution`.

        The one place a source image is composited and resized, for training sources, photos, viewer uploads and
        evaluation alike. `background` (RGB in [0, 1]) is used when the processor sets none. Compositing comes
        first, as OpenLRM does (a bicubic resize overshoots alpha); for the bilinear resize the order changes
        nothing, both steps being linear.
        """
        color = self.background if self.background is not None else background
        if color is None:
            raise ValueError("prepare needs a background: the processor sets none and none was given")
        alpha = rgba[3:].clamp(0, 1)
        bg = torch.as_tensor(color, dtype=rgba.dtype, device=rgba.device).reshape(3, 1, 1)
        t = torch.cat([rgba[:3] * alpha + bg * (1 - alpha), alpha], 0)
        s = self.resolution
        if tuple(t.shape[-2:]) != (s, s):
            if self.resize == "bicubic_align_corners":
                t = F.interpolate(t[None], size=(s, s), mode="bicubic", align_corners=True)[0]
            else:
                t = F.interpolate(t[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        t = t.clamp(0, 1)
        return t[:3].contiguous(), t[3:].contiguous()
