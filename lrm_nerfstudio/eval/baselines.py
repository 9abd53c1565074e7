"""Baselines any single-image reconstruction model should beat, scored on the same objects and metrics as the model.

* Background: every pixel the background colour, no geometry.
* Silhouette ellipsoid: an ellipsoid fitted to the source view's mask. Its semi-axes along the camera's right and up
  axes (world X and Z for the canonical camera) come from the mask's extent at the camera's scale, with the
  perspective of the source camera undone exactly; the semi-axis along the view direction (world Y) is the mean of
  the two. It is centred at the origin's depth, behind the mask's centre, and has the mean colour of the mask.

Also a flat and a shaded mesh renderer for the baseline's images and for the report's pictures (open3d ray casting
through `lrm_nerfstudio.generate.renderer.MeshRenderer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from jaxtyping import Float

from lrm_nerfstudio.generate.renderer import ConstantAlbedo, Lighting, MeshRenderer, VertexColorAlbedo


@dataclass(frozen=True)
class EllipsoidFit:
    """A silhouette ellipsoid in world coordinates."""

    center: Float[np.ndarray, "3"]
    """Centre (world)."""
    semi_axes: Float[np.ndarray, "3"]
    """Semi-axes along the camera's right, up and backward axes (world X, Z, -Y for the canonical camera)."""
    rotation: Float[np.ndarray, "3 3"]
    """Columns: the camera's right, up and backward axes in world coordinates."""
    color: Float[np.ndarray, "3"]
    """Mean RGB of the masked source pixels, in [0, 1]."""

    def world_semi_axes(self) -> Float[np.ndarray, "3"]:
        """Semi-axis lengths along world X, Y, Z (for a camera whose axes are aligned with the world's)."""
        return np.abs(self.rotation) @ self.semi_axes


def fit_silhouette_ellipsoid(
    rgba: Float[np.ndarray, "H W 4"],
    c2w: Float[np.ndarray, "3 4"],
    intrinsics: Float[np.ndarray, "4"],
    threshold: float = 0.5,
) -> EllipsoidFit:
    """Fit the ellipsoid baseline to one view (straight-alpha RGBA in [0, 1]) seen by camera `c2w`, (fx, fy, cx, cy).

    For an ellipsoid of semi-axes (a, b, c) (right, depth, up) centred at distance d on the optical axis, the mask's
    half-width is f * a / sqrt(d^2 - b^2) (tangent rays), and likewise for c. With b = (a + c) / 2 this has the
    closed form b = k d / sqrt(1 + k^2), k the mean half-extent in normalised image units.

    Raises:
        ValueError: the mask is empty.
    """
    mask = rgba[..., 3] > threshold
    if not mask.any():
        raise ValueError("fit_silhouette_ellipsoid: the source view's mask is empty")
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    rows, cols = np.nonzero(mask)
    left, right = (cols.min() - cx) / fx, (cols.max() + 1 - cx) / fx  # pixel edges, in tan units
    top, bottom = (rows.min() - cy) / fy, (rows.max() + 1 - cy) / fy
    half_x, half_z = 0.5 * (right - left), 0.5 * (bottom - top)
    rotation = np.asarray(c2w[:3, :3], dtype=np.float64)
    eye = np.asarray(c2w[:3, 3], dtype=np.float64)
    depth = float(np.dot(-eye, -rotation[:, 2]))  # distance of the world origin along the viewing direction
    if not depth > 0:
        raise ValueError("fit_silhouette_ellipsoid: the world origin is behind the camera")
    k = 0.5 * (half_x + half_z)
    b = k * depth / np.sqrt(1.0 + k * k)
    s = np.sqrt(depth * depth - b * b)
    centre_cam = np.array([0.5 * (left + right) * depth, -0.5 * (top + bottom) * depth, -depth])
    color = (rgba[..., :3][mask]).mean(axis=0).astype(np.float64)
    return EllipsoidFit(
        center=rotation @ centre_cam + eye,
        semi_axes=np.array([half_x * s, half_z * s, b]),
        rotation=rotation,
        color=color,
    )


def ellipsoid_mesh(fit: EllipsoidFit, subdivisions: int = 4) -> trimesh.Trimesh:
    """The fitted ellipsoid as a triangle mesh with its colour as vertex colours."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    # camera axes: right (x), up (y), backward (z); semi-axes are given as (right, up, depth)
    scale = np.array([fit.semi_axes[0], fit.semi_axes[1], fit.semi_axes[2]])
    vertices = (np.asarray(sphere.vertices) * scale) @ fit.rotation.T + fit.center
    rgba = np.concatenate([np.clip(fit.color, 0, 1) * 255, [255]]).round().astype(np.uint8)
    return trimesh.Trimesh(vertices, sphere.faces, vertex_colors=np.tile(rgba, (len(vertices), 1)), process=False)


FLAT = Lighting(ambient=1.0, directions=np.zeros((0, 3)), intensities=np.zeros(0))
"""Unlit: the albedo as it is (the ellipsoid baseline's images)."""
_LIGHTS = np.array([[0.4, -0.6, 0.7], [-0.6, 0.5, 0.2]])
SHADED = Lighting(
    ambient=0.45, directions=_LIGHTS / np.linalg.norm(_LIGHTS, axis=1, keepdims=True), intensities=np.array([0.6, 0.2])
)
"""A key and a fill light for the report's mesh pictures."""


def render_mesh(
    mesh: trimesh.Trimesh,
    c2w: Float[np.ndarray, "3 4"],
    intrinsics: Float[np.ndarray, "6"],
    background: Float[np.ndarray, "3"],
    lighting: Lighting = FLAT,
) -> tuple[Float[np.ndarray, "H W 3"], Float[np.ndarray, "H W"]]:
    """(RGB on `background`, mask) of `mesh` seen by camera `c2w` with (fx, fy, cx, cy, width, height).

    Vertex colours are used when the mesh has them, else a light grey.
    """
    faces = np.asarray(mesh.faces, dtype=np.int64)
    colors = getattr(mesh.visual, "vertex_colors", None) if mesh.visual.kind == "vertex" else None
    if colors is not None and len(colors) == len(mesh.vertices):
        albedo = VertexColorAlbedo(faces, np.asarray(colors, dtype=np.float64)[:, :3] / 255.0)
    else:
        albedo = ConstantAlbedo(np.array([0.75, 0.75, 0.75]))
    fx, fy, cx, cy, width, height = (float(v) for v in intrinsics)
    c2w4 = np.eye(4)
    c2w4[:3] = c2w
    out = MeshRenderer(np.asarray(mesh.vertices), faces, albedo).render(
        c2w4, fx, fy, cx, cy, int(width), int(height), lighting
    )
    rgb = out.rgba[..., :3].astype(np.float32) / 255.0
    rgb = np.where(out.mask[..., None], rgb, np.asarray(background, dtype=np.float32))
    return rgb.astype(np.float32), out.mask.astype(np.float32)
