"""Pixel lift: the source image lifted straight into the triplane the field reads, beside the decoder's planes.

Not in the paper (nor in OpenLRM or TripoSR). The decoder's planes reach the field through the transformer, its
final LayerNorm and the upsampler, and at the token grid's resolution; a from-scratch model on a CPU budget
spends its first thousand steps predicting the dataset's mean colour and shape. This part adds to the upsampled
planes a volume lifted along the canonical camera's rays at the triplane's own resolution: each voxel gets the
source pixel it projects to (through a linear map) plus features of its image patch, times an occupancy for its
depth slice predicted from the patch and the pixel. The field sees the object's colour and silhouette, at pixel
precision, from the first step, and the decoder learns what the image does not show.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from lrm_nerfstudio.cameras import CANONICAL_DISTANCE, CANONICAL_FOCAL
from lrm_nerfstudio.model.triplane_transformer import (
    patch_maps,
    planes_from_volume,
    project_to_volume,
    slice_occupancy,
)


@dataclass
class PixelLiftConfig(InstantiateConfig):
    """Configuration for :class:`PixelLift` (its widths follow the encoder and the triplane)."""

    _target: type = field(default_factory=lambda: PixelLift)
    enabled: bool = False
    """Add the pixel lift to the triplane (`lrm-tiny`; off in `lrm` and the released models)."""
    cond_dim: int = 768
    """Width of the image tokens (the encoder's `out_dim`)."""
    out_dim: int = 80
    """Channels of the triplane (the upsampler's `out_dim`)."""
    resolution: int = 64
    """Side of the triplane (the upsampler's output): voxels per axis of the lifted volume."""
    extent: float = CANONICAL_FOCAL / CANONICAL_DISTANCE * 2.0
    """Half-width of the [-1, 1] box in normalised image coordinates of the canonical source view at y = 0."""


class PixelLift(nn.Module):
    """Source image and patch tokens -> a [B, 3, C, R, R] triplane term (see the module docstring)."""

    def __init__(self, config: PixelLiftConfig) -> None:
        super().__init__()
        self.config = config
        c, r = config.out_dim, config.resolution
        self.pixel = nn.Linear(3, c)
        self.pixel_occupancy = nn.Linear(3, 1)  # e.g. background-coloured pixels are empty at every depth
        self.patch = nn.Linear(config.cond_dim, c + r)  # features and one occupancy logit per depth slice

    def forward(
        self, source_images: Float[Tensor, "B 3 H W"], image_tokens: Float[Tensor, "B T D_enc"]
    ) -> Float[Tensor, "B 3 C R R"]:
        c, r = self.config.out_dim, self.config.resolution
        # the image at about the triplane's resolution over the box, so that each voxel sees its pixels' mean
        side = max(r, round(r / self.config.extent))
        image = F.interpolate(source_images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        pixels = project_to_volume(image * 2 - 1, r, self.config.extent).permute(0, 2, 3, 4, 1)  # [B, y, z, x, 3]
        patches = patch_maps(self.patch(image_tokens), "the pixel lift")
        patch_volume = project_to_volume(patches, r, self.config.extent)  # [B, C + r, y, z, x]
        logits = slice_occupancy(patch_volume[:, c:]) + self.pixel_occupancy(pixels)[..., 0]
        feats = patch_volume[:, :c] + self.pixel(pixels).permute(0, 4, 1, 2, 3)
        return planes_from_volume(feats * torch.sigmoid(logits)[:, None])
