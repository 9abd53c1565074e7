"""Density field -> triangle mesh: chunked queries, an adaptive iso-level, block-wise marching cubes, export.

Model-independent: anything that maps points in the scene box to a density (and optionally a colour) can be
meshed, so the `lrm-reconstruct` CLI, the viewer and the exporter share one code path.

Memory: the density grid is the only full-size array. At resolution 512 it is kept in float16 (256 MB instead of
512 MB) and marching cubes runs on z-slabs of it, so peak memory stays far below what a float64 grid plus a
float32 coordinate grid (about 4.3 GB at 512^3) would take. `scripts/benchmark_mesh.py` measures it.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mcubes
import numpy as np
import numpy.typing as npt
import torch
import trimesh
from jaxtyping import Float
from torch import Tensor

DensityFn = Callable[[Float[Tensor, "P 3"]], Float[Tensor, "P"]]
ColorFn = Callable[[Float[Tensor, "P 3"]], Float[Tensor, "P 3"]]

FLOAT16_GRID_ABOVE = 256**3
"""Grids with more voxels than this are stored in float16 (see the module docstring)."""
_FLOAT16_MAX = 65504.0
_LOG_FLOOR_RELATIVE = 1e-6
"""Densities below max * this count as empty space when choosing the level (relative, so scale-invariant)."""
_HIST_BINS = 1024
_KERNEL_LOG_SIGMA = 0.25
"""Smoothing of the value-vs-gradient curve, in log-density units."""


class NoSurfaceError(ValueError):
    """The density field has no level set to mesh (empty, constant, or the chosen level cuts nothing)."""


@dataclass(frozen=True)
class IsoLevel:
    """An iso-level and how it was chosen (kept in `mesh.metadata` for reports)."""

    value: float
    method: str
    stats: dict[str, float]


def _grid_axes(resolution: int, bbox) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    lo = np.asarray(bbox[0], dtype=np.float64)
    hi = np.asarray(bbox[1], dtype=np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or not np.all(hi > lo):
        raise ValueError(
            f"extract_mesh: bbox must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) with max > min, got {bbox}"
        )
    return lo, hi, [np.linspace(lo[i], hi[i], resolution) for i in range(3)]


@torch.no_grad()
def sample_density_grid(
    density_fn: DensityFn,
    resolution: int,
    bbox=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
    chunk_size: int = 2**18,
    device: torch.device | str = "cpu",
    dtype: npt.DTypeLike | None = None,
) -> np.ndarray:
    """Query `density_fn` on a resolution^3 lattice spanning `bbox`, a few z-slices at a time.

    Args:
        density_fn: points [P, 3] (world units) -> density [P].
        resolution: lattice points per axis (corners included).
        bbox: ((xmin, ymin, zmin), (xmax, ymax, zmax)).
        chunk_size: most points per `density_fn` call.
        device: where the query points are made (the model's device).
        dtype: storage dtype; default float16 above `FLOAT16_GRID_ABOVE` voxels, else float32.

    Returns:
        Array [R, R, R] indexed (x, y, z). float16 storage saturates at +-65504 (far above any useful iso-level).
    """
    if resolution < 2:
        raise ValueError(f"extract_mesh: resolution must be >= 2, got {resolution}")
    if chunk_size < 1:
        raise ValueError(f"extract_mesh: chunk_size must be >= 1, got {chunk_size}")
    _, _, axes = _grid_axes(resolution, bbox)
    if dtype is None:
        dtype = np.float16 if resolution**3 > FLOAT16_GRID_ABOVE else np.float32
    grid = np.empty((resolution,) * 3, dtype=dtype)
    xs, ys, zs = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in axes)
    slab = max(1, chunk_size // (resolution * resolution))
    for z0 in range(0, resolution, slab):
        z1 = min(resolution, z0 + slab)
        # Only this slab's coordinates exist at any time: never a full R^3 x 3 coordinate grid.
        pts = torch.stack(torch.meshgrid(xs, ys, zs[z0:z1], indexing="ij"), dim=-1).reshape(-1, 3)
        out = torch.cat(
            [_query(density_fn, pts[i : i + chunk_size], "density_fn") for i in range(0, len(pts), chunk_size)]
        )
        if out.shape != (len(pts),):
            raise ValueError(f"extract_mesh: density_fn must return shape [P], got {tuple(out.shape)} for P={len(pts)}")
        vals = out.detach().float().cpu().numpy()
        if dtype == np.float16:
            vals = np.clip(vals, -_FLOAT16_MAX, _FLOAT16_MAX)
        grid[:, :, z0:z1] = vals.reshape(resolution, resolution, z1 - z0)
    return grid


def _query(fn: Callable[[Tensor], Tensor], pts: Tensor, name: str) -> Tensor:
    out = fn(pts)
    if not isinstance(out, Tensor):
        raise TypeError(f"extract_mesh: {name} must return a torch.Tensor, got {type(out).__name__}")
    # Accept [P, 1] as well as [P]: nerfstudio fields return densities with a trailing singleton.
    return out.reshape(len(pts), -1).squeeze(-1) if out.ndim == 2 and out.shape[-1] == 1 else out


def _slabs(grid: np.ndarray, step: int = 32, halo: int = 0):
    """float32 copies of z-slabs [z0 - halo, z1 + halo) (clipped), with the slab's own range."""
    r = grid.shape[2]
    for z0 in range(0, r, step):
        z1 = min(r, z0 + step)
        lo, hi = max(0, z0 - halo), min(r, z1 + halo)
        yield grid[:, :, lo:hi].astype(np.float32), z0 - lo, z1 - lo


def _axis_projections(grid: np.ndarray, spacing: float) -> tuple[int, np.ndarray]:
    """The field rendered orthographically along x, y and z, in one pass over z-slabs.

    Returns:
        `opaque`: the pixels above 50 % opacity (`1 - exp(-sum(sigma) * spacing)` per column), summed over the
        three axes; and the maximum density of every column of the three axes, flattened together. A level tau
        then covers `(maxima > tau).sum()` pixels of the three silhouettes.
    """
    rx, ry, rz = grid.shape
    sums = [np.zeros((ry, rz)), np.zeros((rx, rz)), np.zeros((rx, ry))]
    peaks = [np.zeros((ry, rz), np.float32), np.zeros((rx, rz), np.float32), np.zeros((rx, ry), np.float32)]
    for z0 in range(0, rz, 32):  # slabs along z keep a float16 grid from being copied whole
        z1 = min(rz, z0 + 32)
        s = np.nan_to_num(grid[:, :, z0:z1].astype(np.float32), nan=0.0, posinf=_FLOAT16_MAX, neginf=0.0)
        for axis in (0, 1):  # the slab holds whole columns along x and y: write its z range
            sums[axis][:, z0:z1] = s.sum(axis=axis, dtype=np.float64)
            peaks[axis][:, z0:z1] = s.max(axis=axis)
        sums[2] += s.sum(axis=2, dtype=np.float64)
        np.maximum(peaks[2], s.max(axis=2), out=peaks[2])
    opaque = sum(int(((1.0 - np.exp(-t * spacing)) > 0.5).sum()) for t in sums)
    return opaque, np.concatenate([p.ravel() for p in peaks])


def choose_iso_level(grid: np.ndarray, spacing: float | None = None) -> IsoLevel:
    """Pick an iso-level from the density field alone (no fixed threshold).

    Trained NeRFs put their densities on very different scales (a known OpenLRM complaint: a fixed level gives a
    solid box on one checkpoint and nothing on another), so the level is derived from the data. The principle is
    the boundary criterion of Kindlmann & Durkin ("Semi-automatic generation of transfer functions for direct
    volume rendering", 1998): at an object boundary the field changes fastest, so the boundary value is the one at
    which the mean gradient magnitude |grad sigma| over all voxels of that value peaks. For a blurred step from
    empty to occupied this is the 50% crossing, i.e. the surface.

    Details: voxels are binned by log-density (range [max * 1e-6, max], so the choice is invariant to the density
    scale: multiplying sigma by k multiplies every gradient by k and moves every bin by log k); per bin the sum of
    |grad sigma| (central differences) and the count are smoothed with a Gaussian kernel of 0.25 in log-density
    (kernel regression, so sparse bins do not decide), and the level is the centre of the bin with the largest
    smoothed mean. Levels carried by fewer than `min(64, 1e-5 * voxels)` voxels are ignored so that isolated density
    spikes inside the object cannot win.

    Safeguards: a field with no positive density, or a constant one, raises `NoSurfaceError` with its statistics.
    If too few voxels lie in the range to decide, the level falls back to half the maximum with a warning.

    Soft fields: a briefly trained model predicts fog without a sharp boundary, where the mean gradient keeps
    growing up to the densest voxel and the level above would mesh a speck. With `spacing` (the lattice step in
    world units) the level is checked against what the field's renders show: if its silhouettes along the three
    axes cover less than half of the pixels that the field itself renders above 50 % opacity, the level whose
    silhouettes match those pixels is used instead (method "opacity-silhouette").

    Args:
        grid: densities [R, R, R] indexed (x, y, z), any float dtype; processed in slabs, never copied whole.
        spacing: lattice step in world units (densities are per world unit); None skips the soft-field check.

    Returns:
        The level, the method used and density statistics.
    """
    vmin, vmax, total, n_bad = math.inf, -math.inf, 0.0, 0
    for s, a, b in _slabs(grid):
        finite = np.isfinite(s)
        n_bad += int(s.size - finite.sum())
        if finite.any():
            vmin, vmax = min(vmin, float(s[finite].min())), max(vmax, float(s[finite].max()))
            total += float(s[finite].sum(dtype=np.float64))
    stats = {"min": vmin, "max": vmax, "mean": total / max(1, grid.size - n_bad), "non_finite": float(n_bad)}
    if not math.isfinite(vmax) or vmax <= 0.0 or vmax - vmin <= 1e-12 * max(abs(vmax), 1.0):
        raise NoSurfaceError(f"no surface found: the density field has no positive variation ({_fmt(stats)})")

    floor = vmax * _LOG_FLOOR_RELATIVE
    edges = np.linspace(math.log(floor), math.log(vmax), _HIST_BINS + 1)
    grad_sum = np.zeros(_HIST_BINS)
    count = np.zeros(_HIST_BINS)
    for s, a, b in _slabs(grid, halo=1):
        s = np.nan_to_num(s, nan=0.0, posinf=vmax, neginf=0.0)
        gx, gy, gz = np.gradient(s) if min(s.shape) > 1 else (np.zeros_like(s),) * 3
        g = np.sqrt(gx * gx + gy * gy + gz * gz)[:, :, a:b].ravel()
        v = s[:, :, a:b].ravel()
        keep = v > floor
        idx = np.clip(np.searchsorted(edges, np.log(v[keep])) - 1, 0, _HIST_BINS - 1)
        grad_sum += np.bincount(idx, weights=g[keep], minlength=_HIST_BINS)
        count += np.bincount(idx, minlength=_HIST_BINS)
    centres = 0.5 * (edges[:-1] + edges[1:])
    bin_w = edges[1] - edges[0]
    half = math.ceil(3 * _KERNEL_LOG_SIGMA / bin_w)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * bin_w / _KERNEL_LOG_SIGMA) ** 2)
    sm_grad = np.convolve(grad_sum, kernel, mode="same")
    sm_count = np.convolve(count, kernel, mode="same")
    min_count = min(64.0, 1e-5 * grid.size) * kernel.sum() / (2 * half + 1)
    # smoothing spreads counts into bins outside [min, max]; a level there would cut no voxel edge
    level_values = np.exp(centres)
    valid = (sm_count > max(min_count, 1e-9)) & (level_values > vmin) & (level_values < vmax)
    stats |= {"voxels_in_range": float(count.sum())}
    if valid.sum() >= 2:
        mean_grad = np.where(valid, sm_grad / np.maximum(sm_count, 1e-12), -np.inf)
        k = int(np.argmax(mean_grad))
        stats |= {"peak_mean_gradient": float(mean_grad[k])}
        level = float(math.exp(centres[k]))
        if spacing is not None:
            opaque, maxima = _axis_projections(grid, spacing)
            stats |= {"opaque_silhouette_pixels": float(opaque)}
            if 0 < opaque and (maxima > level).sum() < 0.5 * opaque:
                # the largest level whose silhouettes still cover `opaque` pixels: between the opaque-th and the
                # next largest column maximum
                ranked = np.sort(maxima)[::-1]
                matched = 0.5 * (ranked[opaque - 1] + (ranked[opaque] if opaque < len(ranked) else 0.0))
                if vmin < matched < vmax:
                    return IsoLevel(float(matched), "opacity-silhouette", stats)
        return IsoLevel(level, "max-mean-gradient", stats)
    level = 0.5 * vmax
    warnings.warn(
        f"extract_mesh: too few voxels to choose an iso-level from the data; using half the maximum density, "
        f"iso_level={level:.4g} ({_fmt(stats)})",
        stacklevel=3,
    )
    return IsoLevel(level, "half-max-fallback", stats)


def _fmt(stats: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in stats.items())


@functools.cache
def _mcubes_flips_winding() -> bool:
    """Whether pymcubes' winding points normals inward for 'inside = above the level' (checked, not assumed)."""
    cube = np.zeros((4, 4, 4))
    cube[1:3, 1:3, 1:3] = 1.0
    v, f = mcubes.marching_cubes(cube, 0.5)
    return bool(trimesh.Trimesh(v, f, process=False).volume < 0)


def marching_cubes_blocks(grid: np.ndarray, level: float, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on z-slabs of `grid` with a one-voxel overlap; vertices are in grid-index units (x, y, z).

    Each slab covers cubes [z0, z0 + block); slabs share the lattice plane between them, so seam vertices come out
    twice (identical up to rounding) and are merged by the caller. Only one slab is ever converted to float64.
    """
    r = grid.shape[2]
    verts, faces, offset = [], [], 0
    for z0 in range(0, r - 1, block):
        z1 = min(r - 1, z0 + block)
        sub = np.ascontiguousarray(grid[:, :, z0 : z1 + 1], dtype=np.float64)
        v, f = mcubes.marching_cubes(sub, float(level))
        if len(f) == 0:
            continue
        v[:, 2] += z0
        verts.append(v)
        faces.append(f.astype(np.int64) + offset)
        offset += len(v)
    if not faces:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(verts), np.concatenate(faces)


@torch.no_grad()
def extract_mesh(
    density_fn: DensityFn,
    resolution: int = 256,
    bbox=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
    chunk_size: int = 2**18,
    iso_level: float | None = None,
    color_fn: ColorFn | None = None,
    *,
    block_size: int = 64,
    device: torch.device | str = "cpu",
) -> trimesh.Trimesh:
    """Mesh the level set of a density field with chunked queries and block-wise marching cubes.

    Args:
        density_fn: points [P, 3] in world units -> density [P] (or [P, 1]), higher inside the object.
        resolution: lattice points per axis; 512 works in well under 2 GB (see `scripts/benchmark_mesh.py`).
        bbox: ((xmin, ymin, zmin), (xmax, ymax, zmax)) of the lattice; the mesh lies inside it. Surfaces cut by
            the box are left open there.
        chunk_size: most points per `density_fn` / `color_fn` call.
        iso_level: density level of the surface; None picks it from the data with `choose_iso_level`.
        color_fn: points [P, 3] -> RGB [P, 3] in [0, 1], evaluated at the vertices; None leaves no colours.
        block_size: z-slices per marching-cubes block (memory vs. call overhead; the result does not depend on it).
        device: device on which query points are created.

    Returns:
        A mesh in world coordinates with outward-facing winding, merged seams, and, with `color_fn`, uint8 vertex
        colours. `mesh.metadata` holds `iso_level`, `iso_method` and `density_stats`.

    Raises:
        NoSurfaceError: the field is empty or constant, or the level cuts no voxel edge. The message starts with
            "no surface found" and lists the density statistics.
    """
    lo, hi, _ = _grid_axes(resolution, bbox)
    grid = sample_density_grid(density_fn, resolution, bbox, chunk_size, device)
    if iso_level is None:
        iso = choose_iso_level(grid, spacing=float(np.max((hi - lo) / (resolution - 1))))
    else:
        iso = IsoLevel(float(iso_level), "fixed", {})
    verts, faces = marching_cubes_blocks(grid, iso.value, block=max(1, block_size))
    if len(faces) == 0:
        stats = iso.stats or {"min": float(np.nanmin(grid)), "max": float(np.nanmax(grid))}
        raise NoSurfaceError(
            f"no surface found at iso_level={iso.value:.4g} ({iso.method}); density {_fmt(stats)}. "
            "Pass iso_level=None for an adaptive level, or check that the model produced an object."
        )
    del grid
    if _mcubes_flips_winding():
        faces = faces[:, ::-1]
    verts = lo + verts * ((hi - lo) / (resolution - 1))
    mesh = trimesh.Trimesh(verts, faces, process=False)
    # Seam vertices of neighbouring blocks coincide; merging makes the blocked result equal a single-block one.
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if color_fn is not None:
        pts = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device)
        rgb = torch.cat([_query(color_fn, pts[i : i + chunk_size], "color_fn") for i in range(0, len(pts), chunk_size)])
        if rgb.shape != (len(pts), 3):
            raise ValueError(f"extract_mesh: color_fn must return shape [P, 3], got {tuple(rgb.shape)}")
        rgb8 = (rgb.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        mesh.visual = trimesh.visual.ColorVisuals(
            mesh, vertex_colors=np.concatenate([rgb8, np.full((len(rgb8), 1), 255, np.uint8)], 1)
        )
    mesh.metadata.update({"iso_level": iso.value, "iso_method": iso.method, "density_stats": dict(iso.stats)})
    return mesh


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    # Readers (the viewer, a browser download) must never see a half-written file: write beside it, then rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
"""(x, y, z) -> (x, z, -y): the project's +Z-up world to glTF's +Y-up; the object's front (-Y) becomes +Z."""


def save_mesh(
    mesh: trimesh.Trimesh,
    out_dir: str | Path,
    stem: str,
    formats: tuple[str, ...] = ("glb", "obj", "ply"),
    *,
    glb_y_up: bool = True,
) -> dict[str, Path]:
    """Write `mesh` as GLB, OBJ (vertex colours as `v x y z r g b`) and PLY (or those of `formats`), each atomically.

    Args:
        mesh: the mesh (world coordinates, +Z up).
        out_dir: folder, created if missing.
        stem: file name without extension.
        formats: which of "glb", "obj", "ply" to write.
        glb_y_up: rotate the GLB copy to glTF's mandated +Y-up frame so viewers show it upright. OBJ and PLY keep
            the project's +Z-up world coordinates (use those for metrics against ground truth).

    Returns:
        {"glb": path, "obj": path, "ply": path} (the formats written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not stem or "/" in stem or os.sep in stem:
        raise ValueError(f"save_mesh: stem must be a plain file name, got {stem!r}")
    unknown = set(formats) - {"glb", "obj", "ply"}
    if unknown:
        raise ValueError(f"save_mesh: unknown mesh formats {sorted(unknown)}; use glb, obj, ply")

    def glb() -> bytes:
        glb_mesh = mesh.copy()
        if glb_y_up:
            glb_mesh.apply_transform(Z_UP_TO_Y_UP)
        return glb_mesh.export(file_type="glb")

    exporters = {
        "glb": glb,
        "obj": lambda: mesh.export(file_type="obj", include_color=True, include_normals=True),
        "ply": lambda: mesh.export(file_type="ply"),
    }
    payloads = {fmt: exporters[fmt]() for fmt in dict.fromkeys(formats)}
    paths = {}
    for fmt, data in payloads.items():
        path = out / f"{stem}.{fmt}"
        _atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)
        paths[fmt] = path
    return paths
