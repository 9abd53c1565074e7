"""A fast stand-in for nerfstudio 1.1.5's `texture_utils.unwrap_mesh_with_xatlas` (the texture stage of
`ns-export poisson` and `tsdf`).

nerfstudio's function charts the mesh with xatlas's default options, then finds every texel's triangle with a Python
loop over the faces, 10 at a time, each step touching all N^2 texels: 5000 steps over 4.2 M texels for 50 k faces and
the default 2048^2 texture, hours on a CPU. This one charts with `unwrap_fast` (chart area capped, no chart
optimisation iterations) and rasterises
with `texture.rasterize_uv` (each face visits only its UV bounding box), and returns the same thing:

- texture_coordinates [F, 3, 2]: each face corner's UV in nerfstudio's convention, where texel row h has
  v = (h + 0.5) / N (row 0 is v = 0) and its OBJ writer writes `vt u 1-v`; `texture.py` has row 0 at v = 1, so
  v is flipped here;
- origins [N, N, 3]: the surface point of each texel (barycentric interpolation of its face's vertices);
- directions [N, N, 3]: minus the interpolated vertex normal, unit length.

As in nerfstudio, every texel gets a point: texels no triangle reaches (the gutters between charts) take the point
and direction of the nearest reached texel, so the texture render fills the gutters with the charts' colours.
`LRMTrainerConfig` installs it over nerfstudio's function when an LRM config is loaded (training/trainer.py).
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lrm_nerfstudio.mesh.texture import (
    UVAtlas,
    fill_gutters,
    rasterize_uv,
    unwrap,
)


def unwrap_fast(vertices: np.ndarray, faces: np.ndarray, resolution: int) -> UVAtlas:
    """`texture.unwrap` without xatlas's chart-optimisation iterations (`max_iterations = 0`).

    A decimated Poisson mesh of a trained model (50 k faces, 5,493 components, rough normals) was still in xatlas's
    `computeCharts` after 5 minutes with the iterations and a 1/64 chart-area cap (over 2 minutes with 1/256); without
    them it took 10 s for 23 k charts covering 0.70 of the atlas (docs/RECONSTRUCT.md). Charts stay capped at 1/64,
    the setting measured on that mesh (the marching-cubes default, 1/256, took as long on a 10 k-face Poisson mesh).
    """
    return unwrap(vertices, faces, resolution, chart_area_fraction=1.0 / 64.0, chart_iterations=0)


def unwrap_mesh_with_xatlas(
    vertices: Float[Tensor, "V 3"],
    faces: Int[Tensor, "F 3"],
    vertex_normals: Float[Tensor, "V 3"],
    num_pixels_per_side: int = 1024,
    num_faces_per_barycentric_chunk: int = 10,
) -> tuple[Float[Tensor, "F 3 2"], Float[Tensor, "N N 3"], Float[Tensor, "N N 3"]]:
    """nerfstudio's `unwrap_mesh_with_xatlas`, same arguments and results (see the module docstring);
    `num_faces_per_barycentric_chunk` is accepted and unused (the rasteriser batches by itself).

    Raises:
        texture.TextureBakeError: a mesh with no faces, or charts that do not fit one atlas.
    """
    del num_faces_per_barycentric_chunk
    device = vertices.device
    n = int(num_pixels_per_side)
    verts = vertices.detach().cpu().double().numpy()
    face_idx = faces.detach().cpu().long().numpy()
    normals = vertex_normals.detach().cpu().double().numpy()
    atlas = unwrap_fast(verts, face_idx, n)
    uv = atlas.uv[atlas.faces]  # [F, 3, 2], v up (row 0 at v = 1)
    texture_coordinates = np.stack([uv[..., 0], 1.0 - uv[..., 1]], axis=-1).astype(np.float32)
    raster = rasterize_uv(atlas.uv, atlas.faces, n)
    corners = atlas.vertex_map[atlas.faces[raster.face]]  # [K, 3] input vertex indices
    surface = np.zeros((n * n, 6), np.float64)
    surface[raster.texel, :3] = np.einsum("kj,kjc->kc", raster.bary, verts[corners])
    surface[raster.texel, 3:] = np.einsum("kj,kjc->kc", raster.bary, normals[corners])
    reached = np.zeros(n * n, bool)
    reached[raster.texel] = True
    surface = fill_gutters(surface.reshape(n, n, 6), reached.reshape(n, n))
    origins = torch.from_numpy(np.ascontiguousarray(surface[..., :3], np.float32)).to(device)
    directions = torch.from_numpy(np.ascontiguousarray(-surface[..., 3:], np.float32)).to(device)
    directions = torch.nn.functional.normalize(directions, dim=-1)
    return torch.from_numpy(texture_coordinates).to(device), origins, directions
