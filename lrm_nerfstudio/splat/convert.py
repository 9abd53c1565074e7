"""A density + colour field (any predicted triplane NeRF) -> 3D Gaussians on and near its surface.

Placement (`SplatConversionConfig.placement`):
    "surface"  area-uniform samples of the field's marching-cubes surface (the adaptive iso-level of
               `lrm_nerfstudio.mesh.marching_cubes`, or the reconstruction's own mesh when one is given);
    "density"  samples of the voxels in proportion to the rendering weight `T * alpha` they receive from the
               best of the six axis-aligned orthographic views, jittered inside their voxel.
"surface" is the default: on the analytic sphere of the tests and on a fitted triplane it puts the centres
within a fraction of a voxel of the surface, "density" a voxel or more off it, for the same occupancy IoU (numbers
in `scripts/benchmark_splat.py`'s output and the README).

Each Gaussian then gets, from the field itself:
    colour    the field's RGB at the centre, as the SH DC coefficient (rgb - 0.5) / C0 (higher bands zero);
    normal    the negative, normalised density gradient at the centre (autograd through the field);
    rotation  the shortest rotation taking +Z to that normal (w, x, y, z);
    scale     the sample spacing (RMS distance to the k nearest centres, as 3DGS initialises its scales),
              flattened along the normal by `flatten`;
    opacity   the field's alpha over the Gaussian's extent: 1 - exp(-integral of the density along the normal
              over its extent, +-3 tangential scales), stored as a logit.
Field queries are chunked, so a million Gaussians fit in a few GB on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from jaxtyping import Float
from scipy.spatial import cKDTree
from torch import Tensor

from lrm_nerfstudio.mesh.marching_cubes import NoSurfaceError, extract_mesh, sample_density_grid
from lrm_nerfstudio.splat.gaussians import EmptyReconstructionError, Gaussians, quats_from_normals, rgb_to_sh_dc

RGBDensityFn = Callable[[Float[Tensor, "P 3"]], tuple[Float[Tensor, "P 3"], Float[Tensor, " P"]]]
"""points [P, 3] in the [-1, 1]^3 box -> (RGB [P, 3] in [0, 1], density [P] per world unit)."""

MIN_OPACITY = 1.0 / 255.0
"""Gaussians below this peak opacity are dropped: gsplat and the splat viewers skip them anyway."""


@dataclass
class SplatConversionConfig:
    """How a field becomes Gaussians."""

    num_gaussians: int = 100_000
    """Number of Gaussians placed (fewer are kept where some come out below 1/255 opacity)."""
    placement: Literal["surface", "density"] = "surface"
    """Where they go: marching-cubes surface samples, or samples of the orthographic rendering weights."""
    resolution: int = 128
    """Lattice points per axis of the density grid used for placement (ignored when a mesh is given)."""
    iso_level: float | None = None
    """Density level of the surface ("surface" placement); None chooses it from the field (adaptive)."""
    sh_degree: int = 0
    """Spherical-harmonic degree written (0-3); the bands above the DC are zero until refined."""
    flatten: float = 0.1
    """Scale along the normal relative to the tangential scales."""
    scale_mult: float = 1.0
    """Multiplier of the tangential scale (the RMS distance to the `knn` nearest centres)."""
    knn: int = 3
    """Neighbours used for the sample spacing."""
    opacity_extent: float = 3.0
    """Half-length, in tangential scales, of the segment along the normal over which the field's alpha is taken
    (3: the Gaussian's extent, gsplat's 3-sigma cut-off)."""
    opacity_samples: int = 8
    """Density samples along that segment."""
    chunk_size: int = 2**16
    """Most points per field query (the gradient pass holds a graph of this many points)."""
    seed: int = 0
    """Seed of the sample positions."""


def check_conversion_config(config: SplatConversionConfig) -> None:
    """Refuse settings that cannot give Gaussians (ValueError naming the setting)."""
    if config.num_gaussians <= 0:
        raise ValueError(f"splat conversion: the number of Gaussians must be > 0, got {config.num_gaussians}")
    if not 0 <= config.sh_degree <= 3:
        raise ValueError(f"splat conversion: sh_degree must be 0..3, got {config.sh_degree}")
    if config.resolution < 8:
        raise ValueError(f"splat conversion: resolution must be >= 8, got {config.resolution}")
    for name in ("flatten", "scale_mult", "opacity_extent"):
        if not getattr(config, name) > 0:
            raise ValueError(f"splat conversion: {name} must be > 0, got {getattr(config, name)}")
    if config.knn < 1 or config.opacity_samples < 1 or config.chunk_size < 1:
        raise ValueError("splat conversion: knn, opacity_samples and chunk_size must be >= 1")


def _chunked(fn: RGBDensityFn, points: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    rgb, density = zip(*(fn(points[i : i + chunk]) for i in range(0, len(points), chunk)), strict=True)
    return torch.cat(rgb).float(), torch.cat(density).reshape(-1).float()


def _colour_and_gradient(fn: RGBDensityFn, points: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """RGB, density and d density / d point at `points`, a chunk at a time (graphs never outlive a chunk)."""
    rgbs, densities, grads = [], [], []
    for i in range(0, len(points), chunk):
        with torch.enable_grad():
            p = points[i : i + chunk].detach().requires_grad_(True)
            rgb, density = fn(p)
            (grad,) = torch.autograd.grad(density.sum(), p)
        rgbs.append(rgb.detach().float())
        densities.append(density.detach().reshape(-1).float())
        grads.append(grad.float())
    return torch.cat(rgbs), torch.cat(densities), torch.cat(grads)


def _surface_samples(
    fn: RGBDensityFn, config: SplatConversionConfig, mesh: trimesh.Trimesh | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Area-uniform points of the level-set surface and their face normals."""
    if mesh is None:
        try:
            mesh = extract_mesh(
                lambda p: fn(p)[1],
                resolution=config.resolution,
                chunk_size=config.chunk_size,
                iso_level=config.iso_level,
                device=device,
            )
        except NoSurfaceError as err:
            raise EmptyReconstructionError(f"empty reconstruction: {err}") from err
    if len(mesh.faces) == 0 or mesh.area <= 0:
        raise EmptyReconstructionError("empty reconstruction: the surface mesh has no area")
    points, face_index = trimesh.sample.sample_surface(mesh, config.num_gaussians, seed=config.seed)
    normals = np.asarray(mesh.face_normals)[face_index]
    as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)
    return as_tensor(points), as_tensor(normals)


def orthographic_weights(grid: Float[Tensor, "R R R"], spacing: float) -> Float[Tensor, "R R R"]:
    """Per voxel, the largest volume-rendering weight `T * alpha` it gets from the six axis-aligned views."""
    best = torch.zeros_like(grid)
    for axis in range(3):
        for flip in (False, True):
            g = grid.flip(axis) if flip else grid
            tau = torch.cumsum(g, dim=axis) * spacing - g * spacing  # optical depth in front of each voxel
            weight = torch.exp(-tau) * (1.0 - torch.exp(-g * spacing))
            best = torch.maximum(best, weight.flip(axis) if flip else weight)
    return best


def _density_samples(fn: RGBDensityFn, config: SplatConversionConfig, device: torch.device) -> Tensor:
    """Voxel centres drawn in proportion to their orthographic rendering weight, jittered inside the voxel."""
    r = config.resolution
    grid = sample_density_grid(lambda p: fn(p)[1], r, chunk_size=config.chunk_size, device=device, dtype=np.float32)
    grid = torch.nan_to_num(torch.from_numpy(grid), nan=0.0, posinf=0.0).clamp(min=0.0)
    spacing = 2.0 / (r - 1)
    weights = orthographic_weights(grid, spacing).reshape(-1).double()
    total = float(weights.sum())
    if not total > 0:
        raise EmptyReconstructionError(
            f"empty reconstruction: the density field renders nothing (max density {float(grid.max()):.4g})"
        )
    gen = np.random.default_rng(config.seed)
    cdf = torch.cumsum(weights, 0).numpy()
    idx = np.minimum(np.searchsorted(cdf, gen.random(config.num_gaussians) * cdf[-1]), len(cdf) - 1)
    ijk = np.stack(np.unravel_index(idx, (r, r, r)), axis=-1).astype(np.float64)
    points = -1.0 + (ijk + gen.uniform(-0.5, 0.5, ijk.shape)) * spacing
    return torch.as_tensor(np.clip(points, -1.0, 1.0), dtype=torch.float32, device=device)


def sample_spacing(points: Float[Tensor, "N 3"], knn: int) -> Float[Tensor, " N"]:
    """RMS distance of each point to its `knn` nearest neighbours, clamped to [1/4, 4] x the median."""
    n = len(points)
    if n <= knn:
        return torch.full((n,), 2.0 / max(n, 1) ** 0.5, dtype=points.dtype, device=points.device)
    pts = points.detach().cpu().double().numpy()
    dist, _ = cKDTree(pts).query(pts, k=knn + 1, workers=-1)
    rms = np.sqrt(np.mean(dist[:, 1:] ** 2, axis=1))
    median = float(np.median(rms))
    if not median > 0:  # every sample at one point: fall back to the box size over the count
        median = 2.0 / n**0.5
    spacing = np.clip(rms, 0.25 * median, 4.0 * median)
    return torch.as_tensor(spacing, dtype=points.dtype, device=points.device)


def _alpha_along_normals(
    fn: RGBDensityFn, means: Tensor, normals: Tensor, half: Tensor, config: SplatConversionConfig
) -> Tensor:
    """1 - exp(-sum sigma dt) over the segment mean +- half * normal (midpoint rule)."""
    m = config.opacity_samples
    t = (torch.arange(m, dtype=means.dtype, device=means.device) + 0.5) / m * 2.0 - 1.0  # [m] in (-1, 1)
    per_chunk = max(1, config.chunk_size // m)
    out = []
    for i in range(0, len(means), per_chunk):
        mu, n, h = means[i : i + per_chunk], normals[i : i + per_chunk], half[i : i + per_chunk]
        pts = (mu[:, None] + (t[None, :, None] * h[:, None, None]) * n[:, None]).reshape(-1, 3)
        _, sigma = _chunked(fn, pts, config.chunk_size)
        tau = sigma.view(-1, m).clamp(min=0.0).sum(-1) * (2.0 * h / m)
        out.append(1.0 - torch.exp(-tau))
    return torch.cat(out)


@torch.no_grad()
def gaussians_from_field(
    rgb_density: RGBDensityFn,
    config: SplatConversionConfig | None = None,
    mesh: trimesh.Trimesh | None = None,
    device: torch.device | str = "cpu",
) -> Gaussians:
    """Gaussians on and near the surface of a density + colour field (see the module docstring).

    Args:
        rgb_density: the field; it must be differentiable in the points (the normals are its density gradient).
        config: placement, count and shape settings.
        mesh: the field's surface mesh, when one was already extracted ("surface" placement samples it instead
            of meshing the field again).
        device: where the query points are made (the field's device).

    Returns:
        At most `config.num_gaussians` Gaussians (those below 1/255 opacity dropped), inside the [-1, 1]^3 box.

    Raises:
        ValueError: a setting that cannot give Gaussians (a count <= 0, ...).
        EmptyReconstructionError: the field is empty or constant, or every Gaussian came out transparent; its
            message starts with "empty reconstruction".
    """
    config = config or SplatConversionConfig()
    check_conversion_config(config)
    device = torch.device(device)
    if config.placement == "surface":
        means, face_normals = _surface_samples(rgb_density, config, mesh, device)
    else:
        means, face_normals = _density_samples(rgb_density, config, device), None
    rgb, _, grad = _colour_and_gradient(rgb_density, means, config.chunk_size)
    normals = -F.normalize(grad, dim=-1)
    degenerate = grad.norm(dim=-1) <= 1e-8 * grad.norm(dim=-1).max().clamp(min=1e-30)
    if degenerate.any():  # flat spots of the field: the mesh's normal, or away from the centre of mass
        fallback = face_normals if face_normals is not None else F.normalize(means - means.mean(0), dim=-1)
        normals = torch.where(degenerate[:, None], fallback, normals)

    tangential = sample_spacing(means, config.knn) * config.scale_mult
    alpha = _alpha_along_normals(rgb_density, means, normals, tangential * config.opacity_extent, config)
    alpha = alpha.clamp(max=1.0 - 1e-4)
    scales = torch.stack([tangential, tangential, tangential * config.flatten], dim=-1)
    sh = torch.zeros(len(means), (config.sh_degree + 1) ** 2, 3, device=device)
    sh[:, 0] = rgb_to_sh_dc(rgb.clamp(0.0, 1.0))
    gaussians = Gaussians(
        means=means.clamp(-1.0, 1.0),
        quats=quats_from_normals(normals),
        log_scales=scales.log(),
        opacity_logits=torch.logit(alpha.clamp(min=1e-6)),
        sh=sh,
        normals=normals,
    )
    kept = gaussians.select(alpha >= MIN_OPACITY)
    if len(kept) == 0:
        raise EmptyReconstructionError(
            f"empty reconstruction: all {len(gaussians)} Gaussians are below 1/255 opacity (the field's density "
            f"near its surface is too low: at most {float(alpha.max()):.2g} alpha over a Gaussian; an undertrained "
            "model's fog)"
        )
    return kept


def triplane_rgb_density(field, triplanes: Float[Tensor, "1 3 C R R"]) -> RGBDensityFn:
    """The `RGBDensityFn` of one predicted triplane, through `field.rgb_density_at` (any model the project loads)."""

    def rgb_density(points: Tensor) -> tuple[Tensor, Tensor]:
        rgb, density = field.rgb_density_at(points[None], triplanes)
        return rgb[0], density[0, :, 0]

    return rgb_density


def gaussians_from_triplane(
    field,
    triplanes: Float[Tensor, "1 3 C R R"],
    config: SplatConversionConfig | None = None,
    mesh: trimesh.Trimesh | None = None,
) -> Gaussians:
    """`gaussians_from_field` of a predicted triplane decoded by `field` (a `TriplaneField`)."""
    return gaussians_from_field(triplane_rgb_density(field, triplanes), config, mesh=mesh, device=triplanes.device)
