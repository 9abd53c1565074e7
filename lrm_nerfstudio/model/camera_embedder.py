"""Camera embedder: the 16 source-camera numbers -> the vector that modulates the decoder's norms."""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn


@dataclass
class CameraEmbedderConfig(InstantiateConfig):
    """Configuration for :class:`CameraEmbedder`."""

    _target: type = field(default_factory=lambda: CameraEmbedder)
    camera_dim: int = 16
    """Size of the camera vector (12 numbers of the 3x4 c2w, then fx/W, fy/H, cx/W, cy/H)."""
    embed_dim: int = 1024
    """Size D_mod of the camera embedding (the paper uses the decoder width)."""


class CameraEmbedder(nn.Module):
    """Camera feature MLP of LRM (Hong et al. 2023, §3.2 "Camera features").

    The 16-d camera vector goes through Linear-SiLU-Linear; the result modulates every LayerNorm of the
    image-to-triplane decoder (adaLN).
    """

    def __init__(self, config: CameraEmbedderConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim: int = config.embed_dim
        """Embedding size D_mod."""
        self.mlp = nn.Sequential(
            nn.Linear(config.camera_dim, config.embed_dim),
            nn.SiLU(),
            nn.Linear(config.embed_dim, config.embed_dim),
        )

    def forward(self, cameras: Float[Tensor, "B 16"]) -> Float[Tensor, "B D_mod"]:
        """Embed source cameras (see `lrm_nerfstudio.cameras.camera_vector`)."""
        return self.mlp(cameras)
