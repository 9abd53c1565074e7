"""Tiny hand-made lrm-multiview datasets for the data tests (independent of lrm_nerfstudio.generate).

Each view is a disc on a transparent background whose colour encodes the pixel position and the view index
(r = x / W, g = y / H, b = view / V), so a crop can be located exactly in its source image.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lrm_nerfstudio.cameras import CANONICAL_DISTANCE, CANONICAL_FOCAL, look_at, spherical_eye


def view_rgba(view: int, n_views: int, width: int, height: int) -> np.ndarray:
    """uint8 HxWx4 test pattern of one view."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgba = np.zeros((height, width, 4), np.float32)
    rgba[..., 0] = (x + 0.5) / width
    rgba[..., 1] = (y + 0.5) / height
    rgba[..., 2] = (view + 1) / (n_views + 1)
    r2 = ((x + 0.5 - width / 2) / (width / 2)) ** 2 + ((y + 0.5 - height / 2) / (height / 2)) ** 2
    rgba[..., 3] = (r2 < 0.6).astype(np.float32)
    return (rgba * 255).round().astype(np.uint8)


def view_c2w(view: int) -> np.ndarray:
    """View 0 is the canonical front camera; others go around at alternating elevations."""
    if view == 0:
        eye = spherical_eye(CANONICAL_DISTANCE, 0.0, 0.0)
    else:
        eye = spherical_eye(CANONICAL_DISTANCE, 360.0 * view / 7.0, 25.0 if view % 2 else -15.0)
    c2w = np.eye(4)
    c2w[:3] = look_at(eye)
    return c2w


def write_png16(path: Path, arr: np.ndarray) -> None:
    """Writes a uint16 HxWxC (C = 3 or 4) or HxW array as a 16-bit PNG (PIL cannot write 16-bit colour)."""
    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    color_type = {1: 0, 3: 2, 4: 6}[ch]
    raw = b"".join(b"\x00" + arr[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def write_object(
    root: Path,
    object_id: str,
    n_views: int = 6,
    width: int = 64,
    height: int | None = None,
    mode: str = "RGBA",
    depth: bool = False,
) -> Path:
    """Writes one object folder (a valid nerfstudio dataset) and returns it.

    Args:
        mode: "RGBA", "RGB" (no alpha), "L" (grayscale, invalid) or "RGBA16" (16-bit).
        depth: also write 16-bit depth PNGs (value = 1000 * 1.5 inside the disc, i.e. 1.5 world units).
    """
    height = height or width
    obj = Path(root) / object_id
    (obj / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for v in range(n_views):
        rgba = view_rgba(v, n_views, width, height)
        name = f"images/{v:03d}.png"
        if mode == "RGBA":
            Image.fromarray(rgba, "RGBA").save(obj / name)
        elif mode == "RGB":
            Image.fromarray(rgba[..., :3], "RGB").save(obj / name)
        elif mode == "L":
            Image.fromarray(rgba[..., 0], "L").save(obj / name)
        elif mode == "RGBA16":
            write_png16(obj / name, rgba.astype(np.uint16) * 257)
        else:
            raise ValueError(mode)
        frame = {"file_path": name, "transform_matrix": view_c2w(v).tolist()}
        if depth:
            (obj / "depth").mkdir(exist_ok=True)
            d = np.where(rgba[..., 3] > 0, 1500, 0).astype(np.uint16)
            write_png16(obj / f"depth/{v:03d}.png", d)
            frame["depth_file_path"] = f"depth/{v:03d}.png"
        frames.append(frame)
    transforms = {
        "camera_model": "PINHOLE",
        "fl_x": CANONICAL_FOCAL * width,
        "fl_y": CANONICAL_FOCAL * width,
        "cx": width / 2,
        "cy": height / 2,
        "w": width,
        "h": height,
        "frames": frames,
    }
    (obj / "transforms.json").write_text(json.dumps(transforms))
    return obj


def write_dataset_json(root: Path, splits: dict[str, Sequence[str]]) -> Path:
    """Writes dataset.json listing the given ids."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = {"format": "lrm-multiview", "version": 1, "splits": {k: list(v) for k, v in splits.items()}}
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def write_dataset(
    root: Path, n_train: int = 8, n_val: int = 2, n_test: int = 2, n_views: int = 6, width: int = 64, **kwargs
) -> Path:
    """A full small dataset: obj_train_000.., obj_val_000.., obj_test_000..."""
    splits = {
        s: [f"obj_{s}_{i:03d}" for i in range(n)]
        for s, n in (("train", n_train), ("val", n_val), ("test", n_test))
        if n > 0
    }
    for ids in splits.values():
        for oid in ids:
            write_object(root, oid, n_views=n_views, width=width, **kwargs)
    return write_dataset_json(root, splits)
