"""Triplane upsampler: a transposed convolution (stride 2 in the paper) applied to each plane."""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn


@dataclass
class TriplaneUpsamplerConfig(InstantiateConfig):
    """Configuration for :class:`TriplaneUpsampler`."""

    _target: type = field(default_factory=lambda: TriplaneUpsampler)
    in_dim: int = 1024
    """Channels D of the decoder's planes."""
    out_dim: int = 80
    """Channels C of the upsampled triplane (paper: 80)."""
    scale: int = 2
    """Upsampling factor: kernel and stride of the transposed convolution (paper, OpenLRM, TripoSR: 2). Each token
    becomes a scale x scale block of texels, so a larger factor buys triplane resolution for the field without
    more tokens in the transformer (whose attention grows with their square)."""


class TriplaneUpsampler(nn.Module):
    """De-convolution from decoder tokens to the triplane (Hong et al. 2023, §3.2, end of "Image-to-triplane decoder").

    The 32x32 token planes of width 1024 become 64x64 planes of 80 channels. The three planes share the kernel;
    folding them into the batch makes it one convolution.
    """

    def __init__(self, config: TriplaneUpsamplerConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim: int = config.out_dim
        """Channels C of the output triplane."""
        self.deconv = nn.ConvTranspose2d(config.in_dim, config.out_dim, kernel_size=config.scale, stride=config.scale)

    def forward(self, planes: Float[Tensor, "B 3 D n n"]) -> Float[Tensor, "B 3 C R R"]:
        """Upsample each plane by `scale` (R = scale * n)."""
        b, three, d, h, w = planes.shape
        out = self.deconv(planes.reshape(b * three, d, h, w))
        return out.reshape(b, three, *out.shape[1:])
