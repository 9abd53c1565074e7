"""Known-answer fields for the splat tests and benchmarks: a sphere, analytic and as a hand-made triplane."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from lrm_nerfstudio.model.triplane_field import TriplaneField, TriplaneFieldConfig
from lrm_nerfstudio.splat.convert import RGBDensityFn


def sphere_rgb_density(
    centre: Float[Tensor, "3"], radius: float, density: float = 50.0, width: float = 0.02
) -> RGBDensityFn:
    """An analytic solid sphere: density `density * sigmoid((radius - |p - c|) / width)`, colour (p + 1) / 2."""

    def rgb_density(points: Tensor) -> tuple[Tensor, Tensor]:
        distance = (points - centre.to(points)).norm(dim=-1)
        return (points + 1.0) / 2.0, density * torch.sigmoid((radius - distance) / width)

    return rgb_density


def sphere_triplane(
    centre: Float[Tensor, "3"], radius: float, resolution: int = 128, sharpness: float = 8.0
) -> tuple[TriplaneField, Float[Tensor, "1 3 4 R R"]]:
    """A TriplaneField and a triplane made by hand whose density is exp(k (r^2 - |p - c|^2)): 1 on the sphere.

    Summed planes: channel 0 holds (x - cx)^2 + (y - cy)^2 on XY and (z - cz)^2 on XZ, so that it sums to
    |p - c|^2; channels 1-3 hold x, y (XY) and z (XZ). The MLP is one Linear layer: raw density k (r^2 - d^2) and
    RGB sigmoid(2x, 2y, 2z).
    """
    field = TriplaneFieldConfig(triplane_dim=4, aggregation="sum", num_hidden_layers=0, density_bias=0.0).setup()
    u = -1.0 + (torch.arange(resolution) + 0.5) * 2.0 / resolution  # texel centres (align_corners=False)
    rows, cols = torch.meshgrid(u, u, indexing="ij")  # plane rows = its second axis, columns = its first
    planes = torch.zeros(1, 3, 4, resolution, resolution)
    cx, cy, cz = centre.tolist()
    planes[0, 0, 0] = (cols - cx) ** 2 + (rows - cy) ** 2  # XY: (x, y)
    planes[0, 1, 0] = (rows - cz) ** 2  # XZ: (x, z)
    planes[0, 0, 1], planes[0, 0, 2], planes[0, 1, 3] = cols, rows, rows
    with torch.no_grad():
        linear = field.mlp[0]
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[0, 0], linear.bias[0] = -sharpness, sharpness * radius**2
        for c in range(3):
            linear.weight[1 + c, 1 + c] = 2.0
    return field.eval(), planes
