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

from lrm_nerfstudio.io.atomic import atomic_write_bytes
from lrm_nerfstudio.mesh.texture import TexturedMesh, obj_files

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


# ------------------------------------------------------------------------------------------ coarse to fine
COARSE_MIN_CELLS = 48
"""The coarse lattice has at least this many cells per axis (its stride is the largest power of two allowing it)."""
THIN_MARGIN = 0.5
"""Coarse cells whose densest corner reaches this fraction of a positive level are candidates for refining even if
no corner lies above it (parts thinner than the coarse stride then survive when their density reaches the coarse
lattice); a candidate is queried whole when its half-stride points cross the level or rise inside it
(`_thin_seeds`)."""
THIN_MARGIN_MAX_FRACTION = 0.1
"""Above this fraction of coarse cells flagged, the thin-part margin is dropped (see `coarse_to_fine_bricks`)."""
DENSE_ABOVE_FRACTION = 0.4
"""If more coarse cells than this fraction need refining, `extract_mesh` queries the dense lattice instead."""
_SUPER = 32
"""Cells per axis of the dense blocks that marching cubes runs on at the end (several bricks each)."""
_CELLS_PER_PASS = 2**20
"""Cells handled at once by the brick search: bounds its temporary arrays (about 50 MB)."""


def coarse_stride(resolution: int) -> int:
    """Stride (in lattice steps) of the coarse lattice of `extract_mesh`'s coarse-to-fine search: the largest power
    of two that leaves at least `COARSE_MIN_CELLS` coarse cells per axis (1: the lattice is already coarse)."""
    cells = max(1, resolution - 1)
    return 1 << max(0, math.floor(math.log2(max(1.0, cells / COARSE_MIN_CELLS))))


_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.int64)
_FACES = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.int64)


class _BrickLattice:
    """Densities of a (n + 1)^3 lattice, queried brick by brick: a brick is one coarse cell, `size`^3 lattice cells.

    A brick owns the `size`^3 lattice points at its origin's side ([a*size, (a+1)*size) per axis), stored densely
    in a slot of `values` (NaN: not queried). A brick's cell corners are its own points plus the first face, edge
    and corner points of its seven + neighbours, so processing a brick queries those layers of the neighbours and
    nothing more. Every lattice point is queried at most once, memory follows the surface, and the bookkeeping is
    array indexing on the small grid of bricks.
    """

    def __init__(
        self, density_fn: DensityFn, lo: np.ndarray, step: np.ndarray, n: int, size: int, chunk_size, device
    ) -> None:
        self.density_fn, self.lo, self.step, self.n, self.size = density_fn, lo, step, n, size
        self.chunk_size, self.device = chunk_size, device
        self.bricks = n // size  # bricks with cells per axis; index `bricks` owns only the last lattice plane
        self.slot = np.full((self.bricks + 1,) * 3, -1, np.int64)
        self.brick_of = np.zeros((0, 3), np.int64)  # slot -> brick
        self.values = np.empty((0, size, size, size), np.float32)
        self.used = 0
        self.queried = 0
        self._local = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), -1).reshape(-1, 3)
        self.all_corners = np.stack(np.meshgrid(*(np.arange(size + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
        """Every corner of a brick's cells, in brick-local coordinates [0, size]^3."""

    def query(self, idx: np.ndarray) -> np.ndarray:
        """Densities at lattice indices [P, 3] (float32; non-finite values stored as 0 / the largest float32)."""
        vals = np.empty(len(idx), np.float32)
        for i in range(0, len(idx), self.chunk_size):
            pts = torch.as_tensor(self.lo + idx[i : i + self.chunk_size] * self.step, dtype=torch.float32)
            out = _query(self.density_fn, pts.to(self.device), "density_fn")
            if out.shape != (len(pts),):
                raise ValueError(
                    f"extract_mesh: density_fn must return shape [P], got {tuple(out.shape)} for P={len(pts)}"
                )
            vals[i : i + len(pts)] = out.detach().float().cpu().numpy()
        self.queried += len(idx)
        return np.nan_to_num(vals, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)

    def query_coarse(self) -> np.ndarray:
        """The whole coarse lattice (every `size`-th point), dense [bricks + 1]^3 (the bricks' first points)."""
        g = np.arange(0, self.n + 1, self.size)
        pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        self.coarse = self.query(pts).reshape((len(g),) * 3)
        return self.coarse

    def _allocate(self, bricks: np.ndarray) -> None:
        """Give `bricks` [K, 3] (unique) slots where they have none; their first point is the coarse lattice's."""
        bricks = bricks[self.slot[bricks[:, 0], bricks[:, 1], bricks[:, 2]] < 0]
        if len(bricks) == 0:
            return
        if self.used + len(bricks) > len(self.values):  # grow by doubling: amortised, not a copy per call
            size = max(2 * len(self.values), self.used + len(bricks))
            values = np.empty((size,) + self.values.shape[1:], np.float32)
            values[: self.used] = self.values[: self.used]
            brick_of = np.zeros((size, 3), np.int64)
            brick_of[: self.used] = self.brick_of[: self.used]
            self.values, self.brick_of = values, brick_of
        slots = self.used + np.arange(len(bricks))
        self.used += len(bricks)
        self.slot[bricks[:, 0], bricks[:, 1], bricks[:, 2]] = slots
        self.brick_of[slots] = bricks
        self.values[slots] = np.nan
        self.values[slots, 0, 0, 0] = self.coarse[bricks[:, 0], bricks[:, 1], bricks[:, 2]]

    def fill(self, bricks: np.ndarray, corners: np.ndarray | None = None) -> None:
        """Query the cell corners `corners` (brick-local [M, 3] in [0, size]^3; default all) of `bricks` [K, 3]
        (unique, inside [0, bricks)^3) that are not known yet."""
        s, s3 = self.size, self.size**3
        corners = self.all_corners if corners is None else corners
        offsets, local = corners // s, corners % s  # a corner is a point of the brick (offset 0) or of a + neighbour
        lin = (local[:, 0] * s + local[:, 1]) * s + local[:, 2]
        used = np.unique(offsets, axis=0)
        self._allocate(np.unique((bricks[:, None, :] + used[None]).reshape(-1, 3), axis=0))
        owner = bricks[:, None, :] + offsets[None]  # [K, M, 3]
        need = (self.slot[owner[..., 0], owner[..., 1], owner[..., 2]] * s3 + lin[None]).ravel()
        flat = self.values.reshape(-1)
        need = np.unique(need[np.isnan(flat[need])])
        for i in range(0, len(need), self.chunk_size):
            part = need[i : i + self.chunk_size]
            idx = self.brick_of[part // s3] * s + self._local[part % s3]
            # points past the last lattice plane (owned by the top bricks) are never cell corners
            flat[part] = self.query(np.minimum(idx, self.n))

    def corner_blocks(self, bricks: np.ndarray) -> np.ndarray:
        """[K, size + 1, size + 1, size + 1] densities at the cell corners of `bricks` (each and its + neighbours
        filled)."""
        s = self.size
        out = np.empty((len(bricks), s + 1, s + 1, s + 1), np.float32)
        for di, dj, dk in _CORNERS:
            nb = bricks + (di, dj, dk)
            v = self.values[self.slot[nb[:, 0], nb[:, 1], nb[:, 2]]]
            out[:, di * s : s + di, dj * s : s + dj, dk * s : s + dk] = v[
                :, : s if di == 0 else 1, : s if dj == 0 else 1, : s if dk == 0 else 1
            ]
        return out


def _crossing(blocks: np.ndarray, level: float) -> np.ndarray:
    """[K, s, s, s] cells whose corners lie on both sides of `level`, from corner blocks [K, s + 1, s + 1, s + 1]."""
    above = blocks > level
    any_above = above[:, :-1, :-1, :-1].copy()
    all_above = any_above.copy()
    for i, j, k in _CORNERS[1:]:
        corner = above[:, i : i + above.shape[1] - 1, j : j + above.shape[2] - 1, k : k + above.shape[3] - 1]
        any_above |= corner
        all_above &= corner
    return any_above & ~all_above


def _flag(values: np.ndarray, level: float, margin: float) -> np.ndarray:
    """Cells (rows of their corner values [K, 8]) that may hold surface: corners on both sides of the level, or
    (thin parts) all below a positive level but the densest within `margin` of it."""
    with np.errstate(invalid="ignore"):
        above = values > level
        crossing = above.any(1) & ~above.all(1)
        if margin > 0 and level > 0:
            peak = values.max(1)
            crossing |= (peak >= margin * level) & (peak <= level)
    return crossing


def coarse_to_fine_bricks(
    lattice: _BrickLattice, grid: np.ndarray, level: float, cell_limit: int, margin: float | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The bricks that the `level` surface crosses and their corner densities, found coarse to fine.

    Coarse cells that may hold surface (`_flag` on the coarse lattice `grid`, with the thin-part margin) are
    queried whole at full resolution. The surface is then followed brick by brick: a brick with a crossing cell in
    one of its six boundary layers brings in the brick across that face, until no new brick appears. Crossing
    cells connect through shared faces, so every surface component the coarse search touches once comes out whole,
    exactly as a dense lattice gives it. Cells at or past `cell_limit` per axis (the coarse lattice may overhang the
    caller's) neither count nor spread.

    Returns:
        (bricks [K, 3], corner blocks [K, s + 1, s + 1, s + 1]) of the bricks with a crossing cell, or None when
        more than `DENSE_ABOVE_FRACTION` of the coarse cells need refining (a surface everywhere, as in an
        untrained model's fog): a dense query is then cheaper.
    """
    margin = THIN_MARGIN if margin is None else margin
    s, nb = lattice.size, lattice.bricks
    corners = np.stack([grid[i : i + nb, j : j + nb, k : k + nb] for i, j, k in _CORNERS], -1).reshape(-1, 8)
    crossing = _flag(corners, level, 0.0).reshape(nb, nb, nb)
    if crossing.sum() > DENSE_ABOVE_FRACTION * nb**3:
        return None
    thin = _flag(corners, level, margin).reshape(nb, nb, nb) & ~crossing
    if crossing.mean() + thin.mean() > THIN_MARGIN_MAX_FRACTION:
        # a foggy field (an undertrained model) sits near the level almost everywhere: the thin-part margin would
        # refine the whole volume, so only crossing cells are refined
        thin[:] = False
    seen = np.zeros((nb, nb, nb), bool)
    local = np.arange(s)
    kept_bricks, kept_blocks = [np.zeros((0, 3), np.int64)], [np.zeros((0, s + 1, s + 1, s + 1), np.float32)]

    def follow(frontier: np.ndarray) -> None:
        """Query `frontier`'s bricks, keep those with a crossing cell, and repeat with the unseen bricks across
        their crossed boundary layers."""
        seen[frontier[:, 0], frontier[:, 1], frontier[:, 2]] = True
        while len(frontier):
            grown = []
            for part in _parts(frontier, max(1, _CELLS_PER_PASS // s**3)):
                lattice.fill(part)
                blocks = lattice.corner_blocks(part)
                cross = _crossing(blocks, level)
                cell = part[:, None, :] * s + local[None, :, None]  # [K, s, 3]: cell index along each axis
                inside = cell < cell_limit
                cross &= inside[:, :, 0, None, None] & inside[:, None, :, 1, None] & inside[:, None, None, :, 2]
                has = cross.reshape(len(part), -1).any(1)
                kept_bricks.append(part[has])
                kept_blocks.append(blocks[has])
                layers = (
                    cross[:, 0].any((1, 2)), cross[:, -1].any((1, 2)),
                    cross[:, :, 0].any((1, 2)), cross[:, :, -1].any((1, 2)),
                    cross[:, :, :, 0].any((1, 2)), cross[:, :, :, -1].any((1, 2)),
                )  # fmt: skip
                for face, hit in zip(_FACES, layers):
                    nbr = part[hit] + face
                    nbr = nbr[((nbr >= 0) & (nbr < nb)).all(1)]
                    grown.append(nbr[~seen[nbr[:, 0], nbr[:, 1], nbr[:, 2]]])
            frontier = np.unique(np.concatenate(grown), axis=0)
            seen[frontier[:, 0], frontier[:, 1], frontier[:, 2]] = True

    follow(np.argwhere(crossing))
    # then the thin-part candidates that following the surface left unvisited and the half-stride check keeps
    follow(_thin_seeds(lattice, np.argwhere(thin & ~seen), level))
    return np.concatenate(kept_bricks), np.concatenate(kept_blocks)


def _thin_seeds(lattice: _BrickLattice, candidates: np.ndarray, level: float) -> np.ndarray:
    """The thin-part candidates (bricks whose densest coarse corner is within the margin below the level) worth
    querying whole: those whose half-stride lattice crosses the level, or rises inside the brick to at least its
    densest corner. A smooth fall-off outside a surface (a trained model's soft shell) peaks at a corner and is
    skipped; something thinner than the stride between the coarse points raises the inside."""
    s = lattice.size
    if s < 2 or len(candidates) == 0:
        return candidates
    h = s // 2
    sub = lattice.all_corners[(lattice.all_corners % h == 0).all(1)]  # the 3^3 half-stride points
    corner = (sub % s == 0).all(1)
    keep = []
    for part in _parts(candidates, max(1, _CELLS_PER_PASS // 27)):
        lattice.fill(part, sub)
        vals = lattice.corner_blocks(part)[:, ::h, ::h, ::h].reshape(len(part), 27)
        peak = vals[:, corner].max(1)
        keep.append(part[(vals[:, ~corner].max(1) >= peak) | (vals.max(1) > level)])
    return np.concatenate(keep)


def _parts(cells: np.ndarray, size: int):
    """Consecutive slices of at most `size` rows."""
    for i in range(0, len(cells), max(1, size)):
        yield cells[i : i + size]


def marching_cubes_bricks(
    bricks: np.ndarray, blocks: np.ndarray, level: float, cell_limit: int, super_cells: int = _SUPER
) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of exactly the cells of `bricks` (corner blocks [K, s + 1, s + 1, s + 1]); vertices in
    lattice-index units.

    Bricks are gathered into dense blocks of `super_cells`^3 cells for pymcubes; triangles of cells outside the
    bricks (whose corners were never queried) or past `cell_limit` are dropped, so each kept triangle is the one a
    dense lattice would give that cell.
    """
    if len(bricks) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    s = blocks.shape[1] - 1
    per = max(1, super_cells // s)  # bricks per axis of a super block
    sup = bricks // per
    order = np.lexsort((sup[:, 2], sup[:, 1], sup[:, 0]))
    bricks, blocks, sup = bricks[order], blocks[order], sup[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(sup, axis=0) != 0).any(1)])
    ends = np.r_[starts[1:], len(bricks)]
    fill = level - 1.0 if math.isfinite(level) else 0.0
    offsets = np.stack(np.meshgrid(*(np.arange(s + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
    verts, faces, count = [], [], 0
    for a, b in zip(starts, ends):
        origin = sup[a] * per * s  # lattice index of the super block's first corner
        local = bricks[a:b] - sup[a] * per  # brick positions inside the super block
        block = np.full((per * s + 1,) * 3, fill, np.float64)
        pts = (local[:, None, :] * s + offsets[None]).reshape(-1, 3)
        block[pts[:, 0], pts[:, 1], pts[:, 2]] = blocks[a:b].reshape(-1)
        v, f = mcubes.marching_cubes(block, float(level))
        if len(f) == 0:
            continue
        mine = np.zeros((per,) * 3, bool)
        mine[local[:, 0], local[:, 1], local[:, 2]] = True
        cell = np.clip(np.floor(v[f].mean(1)).astype(np.int64), 0, per * s - 1)
        keep = mine[cell[:, 0] // s, cell[:, 1] // s, cell[:, 2] // s] & ((cell + origin) < cell_limit).all(1)
        f = f[keep]
        if len(f) == 0:
            continue
        verts.append(v + origin)
        faces.append(f.astype(np.int64) + count)
        count += len(v)
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
    coarse_to_fine: bool = True,
    progress: Callable[[str], None] | None = None,
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
        block_size: z-slices per marching-cubes block of the dense path (memory vs. call overhead; the result does
            not depend on it).
        device: device on which query points are created.
        coarse_to_fine: query the density on a coarse lattice (stride `coarse_stride(resolution)`), choose the
            level there, query only the coarse cells near the surface at full resolution, then follow the surface
            brick by brick (`coarse_to_fine_bricks`). The mesh equals the dense lattice's for every surface
            component the coarse search touches; time and memory grow with the surface area instead of the volume.
            False: query the whole dense lattice (the reference path).
        progress: called with a short message after each stage (for progress reports).

    Returns:
        A mesh in world coordinates with outward-facing winding, merged seams, and, with `color_fn`, uint8 vertex
        colours. `mesh.metadata` holds `iso_level`, `iso_method` and `density_stats`.

    Raises:
        NoSurfaceError: the field is empty or constant, or the level cuts no voxel edge. The message starts with
            "no surface found" and lists the density statistics.
    """
    lo, hi, _ = _grid_axes(resolution, bbox)
    note = progress or (lambda message: None)
    if coarse_to_fine:
        verts, faces, iso, grid = _coarse_to_fine_mesh(
            density_fn, resolution, lo, hi, chunk_size, iso_level, device, note
        )
    else:
        grid = sample_density_grid(density_fn, resolution, bbox, chunk_size, device)
        if iso_level is None:
            iso = choose_iso_level(grid, spacing=float(np.max((hi - lo) / (resolution - 1))))
        else:
            iso = IsoLevel(float(iso_level), "fixed", {})
        note(f"density on the dense {resolution}^3 lattice; iso-level {iso.value:.4g} ({iso.method})")
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


def _coarse_lattice(density_fn, resolution, lo, hi, chunk_size, device) -> tuple[_BrickLattice, np.ndarray, np.ndarray]:
    """The coarse-to-fine search's lattice, its queried coarse grid, and the part of it inside the dense lattice."""
    if resolution < 2:
        raise ValueError(f"extract_mesh: resolution must be >= 2, got {resolution}")
    if chunk_size < 1:
        raise ValueError(f"extract_mesh: chunk_size must be >= 1, got {chunk_size}")
    step = (hi - lo) / (resolution - 1)
    stride = coarse_stride(resolution)
    n = -(-(resolution - 1) // stride) * stride  # the coarse lattice may overhang the last lattice point
    lattice = _BrickLattice(density_fn, lo, step, n, stride, chunk_size, device)
    grid = lattice.query_coarse()
    inside = (resolution - 1) // stride + 1
    return lattice, grid, grid[:inside, :inside, :inside]


def surface_level(
    density_fn: DensityFn,
    resolution: int = 128,
    bbox=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
    chunk_size: int = 2**18,
    device: torch.device | str = "cpu",
) -> IsoLevel:
    """The iso-level that `extract_mesh(density_fn, resolution, bbox)` picks by itself, without meshing: chosen by
    `choose_iso_level` on the same coarse lattice (65^3 points at resolutions 128 and 256).

    Raises:
        NoSurfaceError: as `choose_iso_level`.
    """
    lo, hi, _ = _grid_axes(resolution, bbox)
    lattice, _, coarse = _coarse_lattice(density_fn, resolution, lo, hi, chunk_size, device)
    return choose_iso_level(coarse, spacing=float(np.max(lattice.step)) * lattice.size)


def _coarse_to_fine_mesh(density_fn, resolution, lo, hi, chunk_size, iso_level, device, note):
    """`extract_mesh`'s coarse-to-fine path: vertices (lattice units), faces, the level and the coarse grid."""
    lattice, grid, coarse = _coarse_lattice(density_fn, resolution, lo, hi, chunk_size, device)
    stride = lattice.size
    if iso_level is None:
        # the level from the coarse lattice: its histogram of value vs gradient is the dense one's, sub-sampled
        iso = choose_iso_level(coarse, spacing=float(np.max(lattice.step)) * stride)
    else:
        iso = IsoLevel(float(iso_level), "fixed", {})
    note(f"coarse {len(grid)}^3 lattice (stride {stride}); iso-level {iso.value:.4g} ({iso.method})")
    found = coarse_to_fine_bricks(lattice, grid, iso.value, resolution - 1)
    if found is None:  # surface nearly everywhere: the dense lattice is cheaper (same level)
        note("surface nearly everywhere: querying the dense lattice")
        dense = sample_density_grid(density_fn, resolution, (lo, hi), chunk_size, device)
        verts, faces = marching_cubes_blocks(dense, iso.value)
        iso.stats["density_queries"] = float(lattice.queried + dense.size)
        return verts, faces, iso, coarse
    bricks, blocks = found
    note(f"{len(bricks)} surface bricks of {stride}^3 cells after {lattice.queried} density queries")
    verts, faces = marching_cubes_bricks(bricks, blocks, iso.value, resolution - 1)
    iso.stats["density_queries"] = float(lattice.queried)
    return verts, faces, iso, coarse


Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
"""(x, y, z) -> (x, z, -y): the project's +Z-up world to glTF's +Y-up; the object's front (-Y) becomes +Z."""


def save_mesh(
    mesh: trimesh.Trimesh,
    out_dir: str | Path,
    stem: str,
    formats: tuple[str, ...] = ("glb", "obj", "ply"),
    *,
    glb_y_up: bool = True,
    textured: TexturedMesh | None = None,
) -> dict[str, Path]:
    """Write `mesh` as GLB, OBJ (vertex colours as `v x y z r g b`) and PLY (or those of `formats`), each atomically.

    With `textured` (`lrm_nerfstudio.mesh.texture.bake_texture` of the same surface), the GLB is the textured mesh
    with its PBR material (the image embedded), the OBJ is the textured mesh with `{stem}.mtl` and `{stem}.png`
    beside it, and the PLY keeps `mesh`'s vertex colours for tools that want them.

    Args:
        mesh: the mesh (world coordinates, +Z up).
        out_dir: folder, created if missing.
        stem: file name without extension.
        formats: which of "glb", "obj", "ply" to write.
        glb_y_up: rotate the GLB copy to glTF's mandated +Y-up frame so viewers show it upright. OBJ and PLY keep
            the project's +Z-up world coordinates (use those for metrics against ground truth).

    Returns:
        {"glb": path, "obj": path, "ply": path} (the formats written), plus "mtl" and "texture" with `textured`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not stem or "/" in stem or os.sep in stem:
        raise ValueError(f"save_mesh: stem must be a plain file name, got {stem!r}")
    unknown = set(formats) - {"glb", "obj", "ply"}
    if unknown:
        raise ValueError(f"save_mesh: unknown mesh formats {sorted(unknown)}; use glb, obj, ply")

    def glb() -> bytes:
        glb_mesh = (textured.mesh if textured is not None else mesh).copy()
        if glb_y_up:
            glb_mesh.apply_transform(Z_UP_TO_Y_UP)
        return glb_mesh.export(file_type="glb")

    exporters = {
        "glb": glb,
        "obj": lambda: mesh.export(file_type="obj", include_color=True, include_normals=True),
        "ply": lambda: mesh.export(file_type="ply"),
    }
    if textured is not None:
        exporters["obj"] = lambda: obj_files(textured, stem)
    if len(mesh.faces) == 0 or (textured is not None and len(textured.mesh.faces) == 0):
        raise NoSurfaceError("no surface found: the mesh has no faces (nothing written)")
    payloads = {fmt: exporters[fmt]() for fmt in dict.fromkeys(formats)}
    paths = {}
    names = {"mtl": "mtl", "png": "texture"}
    for fmt, data in payloads.items():
        # the OBJ of a textured mesh is three files: the PNG and the MTL go first, so the OBJ never names a missing one
        files = data if isinstance(data, dict) else {f"{stem}.{fmt}": data}
        for name, content in sorted(files.items(), key=lambda item: item[0].endswith(".obj")):
            path = out / name
            # readers (the viewer, a browser download) never see a half-written file
            atomic_write_bytes(path, content.encode() if isinstance(content, str) else content)
            paths[names.get(path.suffix[1:], fmt)] = path
    return paths
