"""Camera conventions shared by the generator, the data loader and the model.

World frame: +Z is up, objects live in the [-1, 1]^3 box. Cameras follow nerfstudio (OpenGL): +X right, +Y up,
the camera looks down its -Z axis, and poses are camera-to-world matrices.

The canonical source camera is the one LRM conditions on at inference (Hong et al. 2023, §3.1; OpenLRM uses
distance 2.0 and normalised focal 0.75): it sits on the -Y axis looking at the origin.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor

CANONICAL_DISTANCE = 2.0
"""Distance of the canonical source camera from the origin."""
CANONICAL_FOCAL = 0.75
"""Focal length of the canonical camera divided by the image width (and height)."""
WORLD_UP = (0.0, 0.0, 1.0)


def look_at(eye: Float[np.ndarray, "3"], target=(0.0, 0.0, 0.0), up=WORLD_UP) -> Float[np.ndarray, "3 4"]:
    """Camera-to-world matrix (OpenGL) of a camera at `eye` looking at `target`."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    forward /= norm
    up_v = np.asarray(up, dtype=np.float64)
    right = np.cross(forward, up_v)
    if np.linalg.norm(right) < 1e-8:  # looking straight along `up`: pick any perpendicular
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    c2w = np.stack([right, cam_up, -forward, eye], axis=1)
    return c2w


def spherical_eye(distance: float, azimuth_deg: float, elevation_deg: float) -> Float[np.ndarray, "3"]:
    """Position on a sphere; azimuth 0 and elevation 0 is the canonical -Y direction."""
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return distance * np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])


def canonical_c2w(distance: float = CANONICAL_DISTANCE) -> Float[np.ndarray, "3 4"]:
    """The canonical source camera's camera-to-world matrix."""
    return look_at(spherical_eye(distance, 0.0, 0.0))


def camera_vector(
    c2w: Float[Tensor, "*bs 3 4"],
    fx: Float[Tensor, "*bs"],
    fy: Float[Tensor, "*bs"],
    cx: Float[Tensor, "*bs"],
    cy: Float[Tensor, "*bs"],
    width: Float[Tensor, "*bs"],
    height: Float[Tensor, "*bs"],
) -> Float[Tensor, "*bs 16"]:
    """The 16 numbers LRM conditions on: flattened 3x4 c2w, then fx/W, fy/H, cx/W, cy/H."""
    intr = torch.stack([fx / width, fy / height, cx / width, cy / height], dim=-1)
    return torch.cat([c2w.reshape(*c2w.shape[:-2], 12), intr.to(c2w.dtype)], dim=-1)


def canonical_source_camera(
    distance: float = CANONICAL_DISTANCE, focal: float = CANONICAL_FOCAL
) -> Float[Tensor, "16"]:
    """Camera vector of the canonical source camera (principal point at the image centre)."""
    c2w = torch.from_numpy(canonical_c2w(distance)).float()
    one = torch.tensor(1.0)
    return camera_vector(c2w, focal * one, focal * one, 0.5 * one, 0.5 * one, one, one)


def unit_scene_box() -> SceneBox:
    """The [-1, 1]^3 box every object is normalised to."""
    return SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))


def ring_cameras(resolution: int = 128, n_azimuth: int = 8, elevations: tuple[float, ...] = (-30.0, 30.0)) -> Cameras:
    """Synthetic cameras around the origin (distance 2, canonical focal) for single-image inference."""
    eyes = [
        spherical_eye(CANONICAL_DISTANCE, az, el)
        for el in elevations
        for az in np.linspace(0.0, 360.0, n_azimuth, endpoint=False)
    ]
    return cameras_looking_at_origin(np.stack(eyes), resolution)


def cameras_looking_at_origin(eyes: np.ndarray, resolution: int) -> Cameras:
    """Square pinhole cameras at `eyes` [n, 3] looking at the origin, +Z up, with the canonical focal."""
    n, f = len(eyes), CANONICAL_FOCAL * resolution
    return Cameras(
        camera_to_worlds=torch.from_numpy(np.stack([look_at(eye) for eye in eyes])).float(),
        fx=torch.full((n, 1), f),
        fy=torch.full((n, 1), f),
        cx=torch.full((n, 1), resolution / 2),
        cy=torch.full((n, 1), resolution / 2),
        width=torch.full((n, 1), resolution, dtype=torch.long),
        height=torch.full((n, 1), resolution, dtype=torch.long),
        camera_type=CameraType.PERSPECTIVE,
    )
