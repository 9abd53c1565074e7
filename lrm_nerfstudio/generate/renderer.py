"""A small CPU ray-cast renderer: open3d's RaycastingScene (Embree) plus our own shading and texture lookup.

Per view it gives RGBA (alpha = mask), z-depth, world-space normals and the mask. Shading is Lambertian with an
ambient term and a few directional lights fixed in the world (so all views of an object agree). Cameras follow
`lrm_nerfstudio.cameras`: OpenGL camera-to-world, +Z up, looking at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from jaxtyping import Float, Int

from lrm_nerfstudio.cameras import CANONICAL_DISTANCE, CANONICAL_FOCAL, canonical_c2w, look_at, spherical_eye
from lrm_nerfstudio.generate.textures import Texture, triplanar


@dataclass
class CameraSamplerConfig:
    """Where the views of an object are taken from."""

    distance_range: tuple[float, float] = (1.8, 2.4)
    """Range of camera distances from the origin."""
    focal_range: tuple[float, float] = (0.7, 0.9)
    """Range of focal length / image width (the canonical camera has 0.75)."""
    elevation_range: tuple[float, float] = (-20.0, 50.0)
    """Range of elevation angles in degrees (0 = horizontal, 90 = looking straight down)."""
    canonical_first: bool = True
    """View 0 is the canonical inference camera (distance 2.0, focal 0.75, on -Y looking at the origin)."""
    fit_radius: float = 1.0
    """Focal lengths are capped so a sphere of this radius at the origin stays in frame (0 = no cap)."""

    def __post_init__(self) -> None:
        lo, hi = self.distance_range
        if not 0 < lo <= hi:
            raise ValueError(f"CameraSamplerConfig.distance_range {self.distance_range}: need 0 < lo <= hi")
        if not 0 < self.focal_range[0] <= self.focal_range[1]:
            raise ValueError(f"CameraSamplerConfig.focal_range {self.focal_range}: need 0 < lo <= hi")
        if not -90 <= self.elevation_range[0] <= self.elevation_range[1] <= 90:
            raise ValueError(f"CameraSamplerConfig.elevation_range {self.elevation_range}: need -90 <= lo <= hi <= 90")

    def dataset_record(self) -> dict:
        """The `camera` entry of dataset.json: the ranges the views actually span (the canonical view included)."""
        distances = [*self.distance_range] + ([CANONICAL_DISTANCE] if self.canonical_first else [])
        return {
            "distance_range": [min(distances), max(distances)],
            "focal_range": list(self.focal_range),
            "elevation_range": list(self.elevation_range),
            "look_at": [0.0, 0.0, 0.0],
            "canonical_view": 0 if self.canonical_first else None,
        }


@dataclass
class View:
    """One camera: OpenGL camera-to-world and the focal length divided by the image width."""

    c2w: Float[np.ndarray, "4 4"]
    focal: float


def sample_views(rng: np.random.Generator, num_views: int, cfg: CameraSamplerConfig) -> list[View]:
    """Cameras on a sphere around the origin, azimuths spread evenly with jitter; view 0 canonical if asked."""
    views = []
    offset = rng.uniform(0, 360)
    for i in range(num_views):
        if i == 0 and cfg.canonical_first:
            c2w3, focal = canonical_c2w(CANONICAL_DISTANCE), CANONICAL_FOCAL
        else:
            azimuth = offset + 360.0 * i / num_views + rng.uniform(-0.4, 0.4) * 360.0 / num_views
            # Uniform on the sphere's band between the elevation limits (sin-elevation uniform).
            s_lo, s_hi = np.sin(np.deg2rad(cfg.elevation_range))
            elevation = float(np.rad2deg(np.arcsin(rng.uniform(s_lo, s_hi))))
            distance = rng.uniform(*cfg.distance_range)
            focal = rng.uniform(*cfg.focal_range)
            if cfg.fit_radius > 0:
                half_angle = np.arcsin(min(cfg.fit_radius / distance, 0.999))
                focal = min(focal, 0.95 * 0.5 / np.tan(half_angle))  # 5% margin to the image border
            c2w3 = look_at(spherical_eye(distance, azimuth, elevation))
        c2w = np.eye(4)
        c2w[:3] = c2w3
        views.append(View(c2w=c2w, focal=float(focal)))
    return views


def orbit_views(num_views: int, elevation_deg: float = 20.0) -> list[View]:
    """Evaluation cameras: view 0 canonical, views 1.. evenly spaced in azimuth from 0 (no jitter) on one orbit at
    `elevation_deg`, at the canonical distance and focal."""
    views = []
    for i in range(num_views):
        azimuth, elevation = (0.0, 0.0) if i == 0 else (360.0 * (i - 1) / max(1, num_views - 1), elevation_deg)
        c2w = np.eye(4)
        c2w[:3] = look_at(spherical_eye(CANONICAL_DISTANCE, azimuth, elevation))
        views.append(View(c2w=c2w, focal=CANONICAL_FOCAL))
    return views


@dataclass
class LightingConfig:
    """Randomised Lambertian + ambient lighting."""

    ambient_range: tuple[float, float] = (0.35, 0.5)
    """Ambient term."""
    key_range: tuple[float, float] = (0.55, 0.85)
    """Intensity of the key light (from the upper hemisphere)."""
    fill_range: tuple[float, float] = (0.15, 0.35)
    """Intensity of the fill light (roughly opposite the key light)."""


@dataclass
class Lighting:
    """Directional lights fixed in the world frame."""

    ambient: float
    directions: Float[np.ndarray, "L 3"]
    """Unit vectors pointing towards each light."""
    intensities: Float[np.ndarray, " L"]


def random_lighting(rng: np.random.Generator, cfg: LightingConfig) -> Lighting:
    """A key light from above at a random azimuth, a weaker fill light from the other side, and ambient."""
    az = rng.uniform(0, 2 * np.pi)
    el = rng.uniform(np.deg2rad(20), np.deg2rad(70))
    key = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    fill = -key + rng.normal(scale=0.3, size=3)
    fill /= np.linalg.norm(fill)
    return Lighting(
        ambient=float(rng.uniform(*cfg.ambient_range)),
        directions=np.stack([key, fill]),
        intensities=np.array([rng.uniform(*cfg.key_range), rng.uniform(*cfg.fill_range)]),
    )


@runtime_checkable
class Albedo(Protocol):
    """Surface colour at ray hits."""

    def __call__(
        self,
        face_ids: Int[np.ndarray, " K"],
        bary: Float[np.ndarray, "K 2"],
        points: Float[np.ndarray, "K 3"],
        normals: Float[np.ndarray, "K 3"],
    ) -> Float[np.ndarray, "K 3"]: ...


@dataclass
class ConstantAlbedo:
    """One colour everywhere."""

    color: Float[np.ndarray, " 3"]

    def __call__(self, face_ids, bary, points, normals):
        return np.broadcast_to(np.asarray(self.color, dtype=np.float64), (len(face_ids), 3)).copy()


@dataclass
class ProceduralAlbedo:
    """Each face takes the procedural texture of its part, looked up triplanar at the hit point."""

    face_part: Int[np.ndarray, " F"]
    textures: list[Texture]

    def __call__(self, face_ids, bary, points, normals):
        out = np.empty((len(face_ids), 3))
        part = self.face_part[face_ids]
        for p in np.unique(part):
            sel = part == p
            out[sel] = triplanar(self.textures[p % len(self.textures)], points[sel], normals[sel])
        return out


@dataclass
class FaceColorAlbedo:
    """One colour per face."""

    colors: Float[np.ndarray, "F 3"]

    def __call__(self, face_ids, bary, points, normals):
        return self.colors[face_ids]


def _interpolate(values: np.ndarray, faces: np.ndarray, face_ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    tri = values[faces[face_ids]]  # [K, 3, C]
    w = np.stack([1 - bary[:, 0] - bary[:, 1], bary[:, 0], bary[:, 1]], axis=1)
    return np.einsum("kj,kjc->kc", w, tri)


@dataclass
class VertexColorAlbedo:
    """Vertex colours interpolated with the hit's barycentric coordinates."""

    faces: Int[np.ndarray, "F 3"]
    colors: Float[np.ndarray, "V 3"]

    def __call__(self, face_ids, bary, points, normals):
        return _interpolate(self.colors, self.faces, face_ids, bary)


@dataclass
class UVTextureAlbedo:
    """An image texture looked up through per-vertex UVs (bilinear, wrapping; v = 0 is the image's bottom row)."""

    faces: Int[np.ndarray, "F 3"]
    uv: Float[np.ndarray, "V 2"]
    image: Float[np.ndarray, "H W 3"]
    factor: Float[np.ndarray, " 3"]

    def __call__(self, face_ids, bary, points, normals):
        uv = _interpolate(self.uv, self.faces, face_ids, bary)
        h, w = self.image.shape[:2]
        x = np.mod(uv[:, 0], 1.0) * w - 0.5
        y = (1.0 - np.mod(uv[:, 1], 1.0)) * h - 0.5
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        x1, y1 = (x0 + 1) % w, np.clip(y0 + 1, 0, h - 1)
        x0, y0 = x0 % w, np.clip(y0, 0, h - 1)
        img = self.image
        top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
        bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
        return (top * (1 - fy) + bottom * fy) * self.factor


@dataclass
class CompositeAlbedo:
    """Different albedos for consecutive face ranges (one per sub-mesh of a scene)."""

    starts: Int[np.ndarray, " P"]
    """First face index of each part, ascending, starting at 0."""
    parts: list[Albedo]

    def __call__(self, face_ids, bary, points, normals):
        out = np.empty((len(face_ids), 3))
        which = np.searchsorted(self.starts, face_ids, side="right") - 1
        for p in np.unique(which):
            sel = which == p
            out[sel] = self.parts[p](face_ids[sel] - self.starts[p], bary[sel], points[sel], normals[sel])
        return out


@dataclass
class RenderOutput:
    """One rendered view."""

    rgba: np.ndarray
    """uint8 [H, W, 4]; background RGB 0, alpha 0."""
    depth: np.ndarray
    """float32 [H, W] z-depth along the camera's -Z axis (world units); 0 where the ray misses."""
    normals: np.ndarray
    """float32 [H, W, 3] world-space unit normals facing the camera; 0 where the ray misses."""
    mask: np.ndarray
    """bool [H, W] ray hit the object."""


class MeshRenderer:
    """Ray-casts one triangle mesh from any pinhole camera (Embree BVH built once per mesh)."""

    def __init__(self, vertices: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"], albedo: Albedo):
        import open3d as o3d

        self.vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(faces, dtype=np.uint32)
        if len(self.faces) == 0:
            raise ValueError("MeshRenderer: mesh has no faces")
        self.albedo = albedo
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(self.vertices), o3d.core.Tensor(self.faces))
        self._o3d = o3d

    def render(
        self, c2w: Float[np.ndarray, "4 4"], fx: float, fy: float, cx: float, cy: float, width: int, height: int,
        lighting: Lighting,
    ) -> RenderOutput:  # fmt: skip
        """Render one view; pixel (i, j) samples its centre, OpenGL camera looking down -Z."""
        j, i = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        # Camera-space direction with z = -1: the ray parameter at the hit is then the z-depth.
        d_cam = np.stack([(j + 0.5 - cx) / fx, -(i + 0.5 - cy) / fy, -np.ones_like(j)], axis=-1)
        rot = np.asarray(c2w[:3, :3], dtype=np.float32)
        d_world = d_cam.reshape(-1, 3) @ rot.T
        origin = np.broadcast_to(np.asarray(c2w[:3, 3], dtype=np.float32), d_world.shape)
        rays = np.ascontiguousarray(np.concatenate([origin, d_world], axis=1), dtype=np.float32)
        hit = self.scene.cast_rays(self._o3d.core.Tensor(rays))
        t = hit["t_hit"].numpy()
        mask = np.isfinite(t)
        face_ids = hit["primitive_ids"].numpy()[mask].astype(np.int64)
        bary = hit["primitive_uvs"].numpy()[mask].astype(np.float64)
        normals = hit["primitive_normals"].numpy()[mask].astype(np.float64)
        dirs = d_world[mask].astype(np.float64)
        # Two-sided: flip normals that face away from the camera (open meshes, wireframes, inner walls).
        flip = np.einsum("kc,kc->k", normals, dirs) > 0
        normals[flip] *= -1
        points = rays[mask, :3].astype(np.float64) + t[mask, None].astype(np.float64) * dirs
        albedo = np.clip(self.albedo(face_ids, bary, points, normals), 0.0, 1.0)
        shade = np.full(len(face_ids), lighting.ambient)
        for direction, intensity in zip(lighting.directions, lighting.intensities):
            shade += intensity * np.clip(normals @ direction, 0.0, None)
        rgb = np.clip(albedo * shade[:, None], 0.0, 1.0)

        n_pix = width * height
        rgba = np.zeros((n_pix, 4), dtype=np.uint8)
        rgba[mask, :3] = np.rint(rgb * 255).astype(np.uint8)
        rgba[mask, 3] = 255
        depth = np.zeros(n_pix, dtype=np.float32)
        depth[mask] = t[mask]
        normal_img = np.zeros((n_pix, 3), dtype=np.float32)
        normal_img[mask] = normals
        return RenderOutput(
            rgba=rgba.reshape(height, width, 4),
            depth=depth.reshape(height, width),
            normals=normal_img.reshape(height, width, 3),
            mask=mask.reshape(height, width),
        )


def write_view(folder: Path, index: int, out: RenderOutput, compress_level: int = 1) -> dict[str, str]:
    """Write images/NNN.png (RGBA), depth/NNN.png (uint16 mm z-depth) and normals/NNN.png; return frame paths."""
    import cv2

    name = f"{index:03d}.png"
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(compress_level)]
    rgba_bgra = np.ascontiguousarray(out.rgba[..., [2, 1, 0, 3]])
    depth_mm = np.clip(np.rint(out.depth * 1000.0), 0, 65535).astype(np.uint16)
    normal_u8 = np.where(out.mask[..., None], np.rint((out.normals + 1.0) * 127.5), 0).astype(np.uint8)
    paths = {"file_path": f"images/{name}", "depth_file_path": f"depth/{name}", "normal_file_path": f"normals/{name}"}
    for key, img in (
        ("file_path", rgba_bgra),
        ("depth_file_path", depth_mm),
        ("normal_file_path", normal_u8[..., ::-1]),
    ):
        target = folder / paths[key]
        if not cv2.imwrite(str(target), np.ascontiguousarray(img), params):
            raise ValueError(f"{target}: could not write image")
    return paths
