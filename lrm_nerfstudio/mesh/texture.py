"""UV texture baking on the CPU: xatlas charts, rasterisation in UV space, the field's colour per texel.

A marching-cubes mesh carries one colour per vertex, so its colour detail is tied to its density and is lost with
the faces a decimation removes. Baking writes the field's colour into an image laid out by xatlas charts instead:

1. `unwrap`: xatlas charts and packs the mesh (vertices on chart seams are split, so the textured mesh has more
   vertices than the input).
2. `rasterize_uv`: every texel whose centre lies in a UV triangle, or within `margin` texels of one, gets that
   triangle and its barycentric coordinates (clamped onto the triangle outside it). Vectorised numpy: candidate
   texels of a face's UV bounding box, one pass per batch of faces; no OpenGL context.
3. `bake_texture`: the texels' surface points go to the colour function in batches, on the model's device.
4. `fill_gutters`: every texel no triangle reached takes the colour of the nearest reached texel (a Euclidean
   distance transform), so the gutters around a chart carry that chart's colours and bilinear filtering and mipmaps
   show no dark seams.

Measured choices (`scripts/benchmark_texture.py`, docs/RECONSTRUCT.md): xatlas's charts are limited to 1/256 of the
mesh's area (`CHART_AREA_FRACTION`) and its chart-optimisation iterations are off (`CHART_ITERATIONS`). Unlimited
charts took 34-58 s for a 50 k-face marching-cubes sphere, because large charts fail to flatten and are split again
into about 1600 pieces; 1/64 with one iteration took 2.8 CPU s, 1/256 with none 0.8 CPU s, for the same PSNR of the
baked texture (within 0.002 dB) and more of the atlas used (0.66 instead of 0.65).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import trimesh
from jaxtyping import Float, Int
from PIL import Image
from scipy import ndimage
from torch import Tensor

ColorFn = Callable[[Float[Tensor, "P 3"]], Float[Tensor, "P 3"]]

MAX_TEXTURE_RESOLUTION = 8192
"""Largest texture side accepted (8192^2 RGB is 192 MiB, the most common GPU texture limit)."""
DEFAULT_TEXTURE_RESOLUTION = 1024
"""Default texture side (see docs/RECONSTRUCT.md: the fidelity table)."""
DEFAULT_PADDING = 4
"""Texels xatlas leaves between charts (asked of xatlas; its atlas is then scaled to the image, about 3 remain)."""
CHART_AREA_FRACTION = 1.0 / 256.0
"""Largest chart as a fraction of the mesh's area (see the module docstring)..."""
MIN_CHART_FACES = 64
"""...but no smaller than the area of this many average faces: on a mesh of a few hundred faces, 1/256 of the area
would give every face its own chart, and the padding around each would fill most of the atlas."""
CHART_ITERATIONS = 0
"""xatlas's chart-optimisation iterations (its default is 1; see the module docstring)."""
_CANDIDATES_PER_PASS = 2**22
"""Candidate texels rasterised per pass (bounds memory at about 200 MB)."""


class TextureBakeError(ValueError):
    """The mesh or the options cannot give a texture (no faces, a resolution out of bounds)."""


def check_texture_resolution(resolution: int) -> str | None:
    """None when `resolution` is usable (0 = no texture), else what is wrong with it."""
    if not 0 <= resolution <= MAX_TEXTURE_RESOLUTION:
        return (
            f"--texture-resolution must be 0 (vertex colours only) or 1..{MAX_TEXTURE_RESOLUTION} texels, "
            f"got {resolution}"
        )
    if 0 < resolution < 16:
        return f"--texture-resolution must be at least 16 texels (or 0 for vertex colours only), got {resolution}"
    return None


@dataclass
class UVAtlas:
    """A mesh cut along chart seams, with a UV per vertex (u right, v up, both in [0, 1])."""

    vertex_map: Int[np.ndarray, " V2"]
    """Index of the input vertex each output vertex copies."""
    faces: Int[np.ndarray, "F 3"]
    """Faces over the output vertices (same order as the input faces)."""
    uv: Float[np.ndarray, "V2 2"]
    chart_count: int
    utilization: float
    """Fraction of the atlas covered by charts."""


def unwrap(
    vertices: Float[np.ndarray, "V 3"],
    faces: Int[np.ndarray, "F 3"],
    resolution: int,
    padding: int = DEFAULT_PADDING,
    chart_area_fraction: float = CHART_AREA_FRACTION,
    chart_iterations: int | None = CHART_ITERATIONS,
) -> UVAtlas:
    """Chart and pack the mesh with xatlas for a `resolution`^2 texture (`chart_iterations`: xatlas's
    chart-optimisation iterations, None for its default)."""
    import xatlas

    if len(faces) == 0:
        raise TextureBakeError("cannot unwrap a mesh with no faces")
    area = float(trimesh.triangles.area(np.asarray(vertices, np.float64)[faces]).sum())
    chart_options = xatlas.ChartOptions()
    chart_options.max_chart_area = area * max(chart_area_fraction, MIN_CHART_FACES / len(faces))
    if chart_iterations is not None:
        chart_options.max_iterations = int(chart_iterations)
    pack_options = xatlas.PackOptions()
    pack_options.resolution = int(resolution)
    pack_options.padding = int(padding)
    pack_options.bilinear = True
    pack_options.blockAlign = True
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    atlas.generate(chart_options, pack_options)
    if atlas.atlas_count != 1:  # xatlas normalises each atlas to [0, 1]: several would overlap in one image
        raise TextureBakeError(f"xatlas packed the charts into {atlas.atlas_count} atlases, expected one")
    vmap, new_faces, uv = atlas[0]
    return UVAtlas(
        vmap.astype(np.int64), new_faces.astype(np.int64), uv.astype(np.float64), atlas.chart_count,
        float(atlas.utilization),
    )  # fmt: skip


def uv_to_texel(uv: Float[np.ndarray, "*n 2"], resolution: int) -> Float[np.ndarray, "*n 2"]:
    """UV (v up) -> continuous texel coordinates (x, y): texel (i, j)'s centre is (j, i), row 0 is the image's top."""
    return np.stack([uv[..., 0] * resolution - 0.5, (1.0 - uv[..., 1]) * resolution - 0.5], axis=-1)


@dataclass
class Rasterization:
    """Which face covers each reached texel, and where."""

    texel: Int[np.ndarray, " K"]
    """Flat texel index row * resolution + column."""
    face: Int[np.ndarray, " K"]
    bary: Float[np.ndarray, "K 3"]
    """Barycentric weights of the face's three corners (on the face: clamped for texels outside it)."""
    inside: np.ndarray
    """bool [K]: the texel centre lies inside (or on) its face."""


def rasterize_uv(
    uv: Float[np.ndarray, "V 2"], faces: Int[np.ndarray, "F 3"], resolution: int, margin: float = 1.0
) -> Rasterization:
    """Every texel whose centre is inside a UV triangle or within `margin` texels of one, with that triangle.

    Where triangles compete for a texel the one whose nearest edge is farthest outward wins (a texel inside a face
    beats one in another face's margin). Faces of zero UV area reach no texel.

    Faces are grouped by the size of their candidate box, so that each group's candidates form a regular
    [faces, rows, columns] grid and every face's signed edge distances are affine in the texel position: three
    dot products per candidate, no gathers.
    """
    n = int(resolution)
    corners = uv_to_texel(np.asarray(uv, np.float64)[faces], n)  # [F, 3, 2]
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    good = np.flatnonzero(np.abs(area2) > 1e-12)
    # signed distance (texels, positive inside) of (x, y) from the edge opposite corner i: dist[f, i] . (x, y, 1)
    dist = np.zeros((len(faces), 3, 3))
    for i, (p, q) in enumerate(((b, c), (c, a), (a, b))):
        length = np.maximum(np.linalg.norm(q - p, axis=1), 1e-12)
        sign = np.sign(area2) / length
        dist[:, i, 0] = -(q[:, 1] - p[:, 1]) * sign
        dist[:, i, 1] = (q[:, 0] - p[:, 0]) * sign
        dist[:, i, 2] = ((q[:, 1] - p[:, 1]) * p[:, 0] - (q[:, 0] - p[:, 0]) * p[:, 1]) * sign
    pad = math.ceil(margin)
    lo = np.clip(np.floor(corners.min(1)).astype(np.int64) - pad + 1, 0, n - 1)
    hi = np.clip(np.ceil(corners.max(1)).astype(np.int64) + pad - 1, 0, n - 1)
    size = hi - lo + 1  # [F, 2]: columns, rows of the candidate box
    best_score = np.full(n * n, -np.inf)
    best_face = np.full(n * n, -1, np.int64)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending_count = 0

    def flush() -> None:
        nonlocal pending, pending_count
        if not pending:
            return
        texel, face, score = (np.concatenate(parts) for parts in zip(*pending))
        pending, pending_count = [], 0
        np.maximum.at(best_score, texel, score)
        # a face whose score is the texel's best wins (ties: any of them, all equally far inside)
        win = score >= best_score[texel]
        best_face[texel[win]] = face[win]

    key = size[good, 0] * (n + 1) + size[good, 1]
    groups, inverse = np.unique(key, return_inverse=True)
    for g, k in enumerate(groups):
        width, height = int(k // (n + 1)), int(k % (n + 1))
        members = good[inverse == g]
        step = max(1, _CANDIDATES_PER_PASS // (width * height))
        for s in range(0, len(members), step):
            face = members[s : s + step]
            x = (lo[face, 0, None] + np.arange(width))[:, None, :].astype(np.float64)  # [f, 1, w]
            y = (lo[face, 1, None] + np.arange(height))[:, :, None].astype(np.float64)  # [f, h, 1]
            d = dist[face]
            score = np.minimum(
                np.minimum(
                    d[:, 0, 0, None, None] * x + d[:, 0, 1, None, None] * y + d[:, 0, 2, None, None],
                    d[:, 1, 0, None, None] * x + d[:, 1, 1, None, None] * y + d[:, 1, 2, None, None],
                ),
                d[:, 2, 0, None, None] * x + d[:, 2, 1, None, None] * y + d[:, 2, 2, None, None],
            )  # [f, h, w]
            fi, yi, xi = np.nonzero(score >= -margin)
            texel = (lo[face[fi], 1] + yi) * n + lo[face[fi], 0] + xi
            pending.append((texel, face[fi], score[fi, yi, xi]))
            pending_count += len(texel)
            if pending_count >= _CANDIDATES_PER_PASS:
                flush()
    flush()
    reached = np.flatnonzero(best_face >= 0)
    face = best_face[reached]
    xy1 = np.stack([reached % n, reached // n, np.ones_like(reached)], 1).astype(np.float64)
    # signed distance / altitude = barycentric weight; clamped onto the face for texels in the margin
    altitude = np.abs(area2[face])[:, None] / np.maximum(
        np.stack([np.linalg.norm(c - b, axis=1), np.linalg.norm(a - c, axis=1), np.linalg.norm(b - a, axis=1)], 1)[
            face
        ],
        1e-12,
    )
    bary = np.clip(np.einsum("kij,kj->ki", dist[face], xy1) / altitude, 0.0, None)
    bary /= np.maximum(bary.sum(1, keepdims=True), 1e-12)
    return Rasterization(reached, face, bary, best_score[reached] >= -1e-9)


def texel_surface(
    vertices: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"], raster: Rasterization
) -> tuple[Float[np.ndarray, "K 3"], Float[np.ndarray, "K 3"]]:
    """The 3D surface point and the unit face normal of every rasterised texel."""
    corners = np.asarray(vertices, np.float64)[faces[raster.face]]  # [K, 3, 3]
    points = np.einsum("kj,kjc->kc", raster.bary, corners)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-20)
    return points, normals


def fill_gutters(image: np.ndarray, reached: np.ndarray) -> np.ndarray:
    """Texels outside every chart ([H, W] mask `reached` False) take the colour of the nearest reached texel."""
    if reached.all() or not reached.any():
        return image
    nearest = ndimage.distance_transform_edt(~reached, return_distances=False, return_indices=True)
    return image[nearest[0], nearest[1]]


@torch.no_grad()
def query_colors(
    color_fn: ColorFn, points: Float[np.ndarray, "P 3"], chunk_size: int = 2**16, device: torch.device | str = "cpu"
) -> Float[np.ndarray, "P 3"]:
    """`color_fn` at `points`, in batches on `device`, as float32 RGB in [0, 1]."""
    out = np.empty((len(points), 3), np.float32)
    for i in range(0, len(points), chunk_size):
        pts = torch.as_tensor(points[i : i + chunk_size], dtype=torch.float32, device=device)
        rgb = color_fn(pts)
        if not isinstance(rgb, Tensor) or rgb.shape != (len(pts), 3):
            shape = tuple(rgb.shape) if isinstance(rgb, Tensor) else type(rgb).__name__
            raise ValueError(f"bake_texture: color_fn must return a tensor [P, 3], got {shape} for P={len(pts)}")
        out[i : i + len(pts)] = rgb.detach().float().clamp(0, 1).cpu().numpy()
    return out


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def color_vertices(
    mesh: trimesh.Trimesh, color_fn: ColorFn, chunk_size: int = 2**16, device: torch.device | str = "cpu"
) -> trimesh.Trimesh:
    """`mesh` with its vertex colours (RGBA uint8) set from `color_fn` at the vertices (in place; returned)."""
    rgb8 = to_uint8(query_colors(color_fn, np.asarray(mesh.vertices), chunk_size, device))
    mesh.visual = trimesh.visual.ColorVisuals(
        mesh, vertex_colors=np.concatenate([rgb8, np.full_like(rgb8[:, :1], 255)], 1)
    )
    return mesh


@dataclass
class TexturedMesh:
    """A baked texture and the mesh that carries it."""

    mesh: trimesh.Trimesh
    """Split along chart seams, with `TextureVisuals`: UVs and a PBR material (baseColorTexture = `image`)."""
    image: np.ndarray
    """uint8 [N, N, 3], row 0 at the top (v = 1)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of "unwrap" and "bake"."""
    report: dict[str, float] = field(default_factory=dict)
    """chart_count, utilization (atlas area covered by charts), texels_baked."""


def textured_material(image: np.ndarray) -> trimesh.visual.material.PBRMaterial:
    """The PBR material of a baked texture: base colour from the image, not metallic, fully rough, one-sided."""
    return trimesh.visual.material.PBRMaterial(
        name="baked",
        baseColorTexture=Image.fromarray(image),
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=False,
    )


def bake_texture(
    mesh: trimesh.Trimesh,
    color_fn: ColorFn,
    resolution: int = DEFAULT_TEXTURE_RESOLUTION,
    *,
    padding: int = DEFAULT_PADDING,
    chunk_size: int = 2**16,
    device: torch.device | str = "cpu",
) -> TexturedMesh:
    """Unwrap `mesh` and bake `color_fn` (points [P, 3] -> RGB [P, 3] in [0, 1]) into a `resolution`^2 texture.

    A marching-cubes mesh should go through `cleanup.clean_mesh` first (`clean_and_bake` does): its sliver
    triangles get zero UV area otherwise.

    Raises:
        TextureBakeError: a resolution out of bounds or a mesh with no faces.
    """
    import time

    problem = check_texture_resolution(resolution)
    if problem is not None or resolution == 0:
        raise TextureBakeError(problem or "bake_texture: resolution 0 means no texture")
    if len(mesh.faces) == 0:
        raise TextureBakeError("bake_texture: the mesh has no faces")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    atlas = unwrap(np.asarray(mesh.vertices), np.asarray(mesh.faces), resolution, padding)
    timings["unwrap"] = time.perf_counter() - start
    start = time.perf_counter()
    vertices = np.asarray(mesh.vertices, np.float64)[atlas.vertex_map]
    raster = rasterize_uv(atlas.uv, atlas.faces, resolution)
    points, _ = texel_surface(vertices, atlas.faces, raster)
    image = np.zeros((resolution * resolution, 3), np.float32)
    image[raster.texel] = query_colors(color_fn, points, chunk_size, device)
    reached = np.zeros(resolution * resolution, bool)
    reached[raster.texel] = True
    image = to_uint8(fill_gutters(image.reshape(resolution, resolution, 3), reached.reshape(resolution, resolution)))
    textured = trimesh.Trimesh(vertices, atlas.faces, process=False)
    textured.visual = trimesh.visual.TextureVisuals(uv=atlas.uv, material=textured_material(image))
    timings["bake"] = time.perf_counter() - start
    report = {"chart_count": float(atlas.chart_count), "utilization": atlas.utilization,
              "texels_baked": float(len(raster.texel))}  # fmt: skip
    return TexturedMesh(textured, image, timings, report)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def obj_files(textured: TexturedMesh, stem: str) -> dict[str, bytes]:
    """`{stem}.obj`, `{stem}.mtl` and `{stem}.png` of a textured mesh, as bytes.

    The MTL is written here rather than by trimesh, whose `Kd 0.4` would darken the texture in viewers that
    multiply `map_Kd` by `Kd`, as the MTL format says (three.js's MTLLoader does).
    """
    from trimesh.exchange.obj import export_obj

    text, _ = export_obj(
        textured.mesh, include_normals=True, include_texture=True, return_texture=True, mtl_name=f"{stem}.mtl"
    )
    mtl = (
        "# baked by lrm-nerfstudio: base colour from the texture, no specular\n"
        f"newmtl {textured.mesh.visual.material.name}\n"
        "Ka 0.000000 0.000000 0.000000\nKd 1.000000 1.000000 1.000000\nKs 0.000000 0.000000 0.000000\n"
        f"Ns 1.000000\nd 1.000000\nillum 1\nmap_Kd {stem}.png\n"
    )
    return {f"{stem}.obj": text.encode(), f"{stem}.mtl": mtl.encode(), f"{stem}.png": encode_png(textured.image)}


DEFAULT_TARGET_FACES = 50_000
"""Face budget used when baking a texture and no --target-faces is given (docs/RECONSTRUCT.md)."""


def clean_and_bake(
    mesh: trimesh.Trimesh,
    color_fn: ColorFn,
    *,
    texture_resolution: int = DEFAULT_TEXTURE_RESOLUTION,
    target_faces: int | None = None,
    min_component_fraction: float | None = None,
    chunk_size: int = 2**16,
    device: torch.device | str = "cpu",
    timings: dict[str, float] | None = None,
) -> tuple[trimesh.Trimesh, TexturedMesh | None]:
    """Clean up a marching-cubes mesh and bake its texture: what every mesh the project writes goes through.

    Args:
        mesh: the mesh (vertex colours, if any, are replaced when the geometry changes).
        color_fn: points [P, 3] -> RGB [P, 3] in [0, 1] (the field's colour).
        texture_resolution: side of the texture; 0 = vertex colours only.
        target_faces: face budget of the decimation; None = `DEFAULT_TARGET_FACES` when baking, every face otherwise.
        min_component_fraction: components smaller than this fraction of the largest one (by area) are dropped;
            None = `cleanup.DEFAULT_MIN_COMPONENT_FRACTION`.
        chunk_size: points per colour query.
        device: where the colour queries run (the model's device).
        timings: "cleanup", "unwrap" and "bake" seconds are added to it.

    Returns:
        The cleaned mesh with vertex colours (for PLY), and the textured mesh (None when `texture_resolution` is 0).

    Raises:
        TextureBakeError, cleanup.MeshCleanupError: options out of bounds.
    """
    import time

    from lrm_nerfstudio.mesh.cleanup import DEFAULT_MIN_COMPONENT_FRACTION, clean_mesh

    problem = check_texture_resolution(texture_resolution)
    if problem is not None:
        raise TextureBakeError(problem)
    timings = {} if timings is None else timings
    if target_faces is None and texture_resolution > 0:
        target_faces = DEFAULT_TARGET_FACES
    fraction = DEFAULT_MIN_COMPONENT_FRACTION if min_component_fraction is None else min_component_fraction
    start = time.perf_counter()
    cleaned, report = clean_mesh(mesh, min_component_fraction=fraction, target_faces=target_faces)
    color_vertices(cleaned, color_fn, chunk_size, device)
    cleaned.metadata["cleanup"] = {"components_dropped": report.components_dropped, "faces_in": report.faces_in,
                                   "faces_out": report.faces_out}  # fmt: skip
    timings["cleanup"] = timings.get("cleanup", 0.0) + time.perf_counter() - start
    if texture_resolution == 0:
        return cleaned, None
    textured = bake_texture(cleaned, color_fn, texture_resolution, chunk_size=chunk_size, device=device)
    for stage, seconds in textured.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    return cleaned, textured
