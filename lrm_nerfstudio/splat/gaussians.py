"""A set of 3D Gaussians, parameterised as 3D Gaussian Splatting (Kerbl et al. 2023) stores them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

SH_C0 = 0.28209479177387814
"""The degree-0 spherical-harmonic basis value 1 / (2 sqrt(pi)): colour = SH_C0 * f_dc + 0.5."""


class EmptyReconstructionError(ValueError):
    """A reconstruction with nothing in it: no Gaussians to write (empty, constant, or every Gaussian transparent),
    or a display object too transparent for nerfstudio's point-cloud export (which would otherwise never finish)."""


def rgb_to_sh_dc(rgb: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
    """The SH DC coefficient whose degree-0 colour is `rgb` (the inverse of `sh_dc_to_rgb`)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(sh_dc: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
    """The view-independent colour of an SH DC coefficient (what gsplat adds 0.5 to)."""
    return sh_dc * SH_C0 + 0.5


def quats_from_normals(normals: Float[Tensor, "N 3"]) -> Float[Tensor, "N 4"]:
    """Unit quaternions (w, x, y, z) of the shortest rotations taking +Z to each (unit) normal.

    A Gaussian with scales (s, s, s * flatten) rotated by it is a disc lying in the plane orthogonal to the normal.
    The rotation from a to b is (1 + a.b, a x b), normalised; for a = +Z that is (1 + nz, -ny, nx, 0). At
    n = -Z it degenerates, and a half turn about X is used.
    """
    nx, ny, nz = normals.unbind(-1)
    q = torch.stack([1.0 + nz, -ny, nx, torch.zeros_like(nz)], dim=-1)
    norm = q.norm(dim=-1, keepdim=True)
    flipped = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=normals.dtype, device=normals.device).expand_as(q)
    return torch.where(norm > 1e-6, q / norm.clamp(min=1e-12), flipped)


@dataclass
class Gaussians:
    """N 3D Gaussians in the project's world (+Z up, the [-1, 1]^3 box), in 3DGS's stored parameters.

    Rendered with gsplat as `rasterization(means, quats, exp(log_scales), sigmoid(opacity_logits), sh, ...,
    sh_degree=sh_degree)`; written to and read from the standard 3DGS PLY by `lrm_nerfstudio.splat.ply`.
    """

    means: Float[Tensor, "N 3"]
    """Centres."""
    quats: Float[Tensor, "N 4"]
    """Rotations as unit quaternions (w, x, y, z), gsplat's and 3DGS's order."""
    log_scales: Float[Tensor, "N 3"]
    """Natural logarithms of the standard deviations along the rotated axes."""
    opacity_logits: Float[Tensor, " N"]
    """Logits of the peak opacities."""
    sh: Float[Tensor, "N K 3"]
    """Spherical-harmonic colour coefficients, K = (degree + 1)^2, DC first."""
    normals: Float[Tensor, "N 3"]
    """Unit surface normals (the rotated +Z axis; written as nx, ny, nz)."""

    def __post_init__(self) -> None:
        k = self.sh.shape[1]
        degree = round(k**0.5) - 1
        if (degree + 1) ** 2 != k or not 0 <= degree <= 3:
            raise ValueError(f"Gaussians: sh must hold (degree + 1)^2 coefficients, degree 0..3; got K = {k}")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        """Spherical-harmonic degree of the colours."""
        return round(self.sh.shape[1] ** 0.5) - 1

    @property
    def rgb(self) -> Float[Tensor, "N 3"]:
        """The view-independent (DC) colour in [0, 1] wherever the field's colour was."""
        return sh_dc_to_rgb(self.sh[:, 0])

    @property
    def scales(self) -> Float[Tensor, "N 3"]:
        """Standard deviations along the rotated axes."""
        return self.log_scales.exp()

    @property
    def opacities(self) -> Float[Tensor, " N"]:
        """Peak opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    def select(self, keep: Tensor) -> Gaussians:
        """The Gaussians picked by a boolean mask or an index tensor."""
        return Gaussians(*(getattr(self, name)[keep] for name in _FIELDS))

    def to(self, device: torch.device | str) -> Gaussians:
        """A copy on `device`."""
        return Gaussians(*(getattr(self, name).to(device) for name in _FIELDS))

    def detach(self) -> Gaussians:
        """A copy without autograd history."""
        return Gaussians(*(getattr(self, name).detach() for name in _FIELDS))


_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh", "normals")
