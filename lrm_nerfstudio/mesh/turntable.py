"""Turntable cameras around the origin and writing their frames as a GIF or MP4.

The ring uses the project's camera conventions (`lrm_nerfstudio.cameras`): +Z up, OpenGL camera-to-world, and the
canonical distance and focal, so the first frame (azimuth 0, elevation 0) would be the source view.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType

from lrm_nerfstudio.cameras import CANONICAL_DISTANCE, CANONICAL_FOCAL, look_at, spherical_eye
from lrm_nerfstudio.io.atomic import atomic_path

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")


def turntable_cameras(
    num_frames: int,
    distance: float = CANONICAL_DISTANCE,
    elevation_deg: float = 20.0,
    focal: float = CANONICAL_FOCAL,
    resolution: int = 256,
    start_azimuth_deg: float = 0.0,
) -> Cameras:
    """A ring of `num_frames` perspective cameras looking at the origin, evenly spaced in azimuth.

    Args:
        num_frames: number of cameras (frames of one full turn).
        distance: distance from the origin.
        elevation_deg: angle above the XY plane.
        focal: focal length divided by the image side (fx = fy = focal * resolution).
        resolution: square image side in pixels.
        start_azimuth_deg: azimuth of the first camera (0 = the canonical -Y side).

    Returns:
        nerfstudio `Cameras` of shape [num_frames], OpenGL camera-to-world, principal point at the image centre.
    """
    if num_frames < 1:
        raise ValueError(f"turntable_cameras: num_frames must be >= 1, got {num_frames}")
    if distance <= 0 or focal <= 0 or resolution < 1:
        raise ValueError(
            f"turntable_cameras: need distance, focal, resolution > 0, got {distance}, {focal}, {resolution}"
        )
    azimuths = start_azimuth_deg + 360.0 * np.arange(num_frames) / num_frames
    return orbit_cameras(azimuths, np.full(num_frames, elevation_deg), distance, focal, resolution)


def orbit_cameras(
    azimuths_deg: np.ndarray,
    elevations_deg: np.ndarray,
    distance: float = CANONICAL_DISTANCE,
    focal: float = CANONICAL_FOCAL,
    resolution: int = 256,
) -> Cameras:
    """Perspective cameras at the given azimuths and elevations (degrees), looking at the origin.

    Returns:
        nerfstudio `Cameras` of shape [len(azimuths_deg)], OpenGL camera-to-world, square images of `resolution`
        pixels, fx = fy = focal * resolution, principal point at the image centre.
    """
    if len(azimuths_deg) != len(elevations_deg) or len(azimuths_deg) < 1:
        raise ValueError(f"orbit_cameras: need as many azimuths as elevations (>= 1), got "
                         f"{len(azimuths_deg)} and {len(elevations_deg)}")  # fmt: skip
    c2w = np.stack([look_at(spherical_eye(distance, az, el)) for az, el in zip(azimuths_deg, elevations_deg)])
    ones = torch.ones(len(c2w), 1)
    return Cameras(
        camera_to_worlds=torch.from_numpy(c2w).float(),
        fx=focal * resolution * ones,
        fy=focal * resolution * ones,
        cx=resolution / 2 * ones,
        cy=resolution / 2 * ones,
        width=(resolution * ones).long(),
        height=(resolution * ones).long(),
        camera_type=CameraType.PERSPECTIVE,
    )


def _to_uint8(frames: list[np.ndarray]) -> list[np.ndarray]:
    if not frames:
        raise ValueError("write_turntable: no frames")
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f)
        if a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"write_turntable: frame {i} has shape {a.shape}, expected HxWx3")
        if a.shape != np.shape(frames[0]):
            raise ValueError(f"write_turntable: frame {i} has shape {a.shape}, frame 0 has {np.shape(frames[0])}")
        if a.dtype != np.uint8:
            a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0, 1) * 255 + 0.5).astype(np.uint8)
        out.append(a)
    return out


def ffmpeg_available() -> bool:
    """Whether imageio can write MP4 here (it needs the imageio-ffmpeg package)."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def write_turntable(frames: list[np.ndarray], path: str | Path, fps: float | int = 24.0) -> Path:  # noqa: PYI041 (beartype rejects an int for a bare float)
    """Write frames as a looping GIF, or as a video when `path` asks for one (.mp4/.mov/.mkv/.webm).

    Video needs imageio-ffmpeg; without it the frames go to `path` with a `.gif` suffix instead and a warning
    says so. The file appears atomically (written beside it, then renamed).

    Args:
        frames: HxWx3 arrays, uint8 or float in [0, 1], all the same shape.
        path: output file.
        fps: frames per second.

    Returns:
        The path actually written.
    """
    if fps <= 0:
        raise ValueError(f"write_turntable: fps must be > 0, got {fps}")
    import imageio.v3 as iio

    data = _to_uint8(frames)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES and not ffmpeg_available():
        gif = path.with_suffix(".gif")
        warnings.warn(f"write_turntable: imageio-ffmpeg is not installed, so {path} is written as {gif}", stacklevel=2)
        path, suffix = gif, ".gif"
    elif suffix not in VIDEO_SUFFIXES and suffix != ".gif":
        raise ValueError(f"write_turntable: {path}: unsupported extension, use .gif or one of {VIDEO_SUFFIXES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".gif":
            # Pillow's GIF writer takes the per-frame duration in milliseconds; loop=0 loops forever.
            iio.imwrite(tmp, np.stack(data), extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            import imageio.v2 as iio2

            # Even sides: most H.264 players reject odd sizes; macro_block_size=1 keeps the size exact otherwise.
            iio2.mimwrite(tmp, data, fps=fps, format="FFMPEG", macro_block_size=1)
    return path
