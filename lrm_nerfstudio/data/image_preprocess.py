"""A user's photo -> the source image LRM expects: object masked, centred, scaled, composited, resized.

The canonical source camera (`lrm_nerfstudio.cameras`) looks at the origin, so the model expects the object in the
middle of the frame at a fixed apparent size. Training renders satisfy that; user photos do not, hence the
recentring. Every guard here exists because the input comes from outside (a CLI path or a browser upload): bad
input raises `ImageInputError` naming the file and the problem, and nothing decodes pixels before the size check.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage
from torch import Tensor

from lrm_nerfstudio.model.processor import ProcessorConfig

MIN_SIDE = 8
"""Smaller images carry no usable object."""
MAX_ASPECT = 32.0
"""Wider (or taller) strips are not photos of an object."""


class ImageInputError(ValueError):
    """A source image that cannot be used; the message starts with the file name, then the problem."""


@dataclass
class PreprocessedImage:
    """The result of `preprocess_image`."""

    image: Float[Tensor, "3 H W"]
    """RGB in [0, 1], composited on the background colour, object centred and scaled."""
    alpha: Float[Tensor, "1 H W"]
    """Object mask in [0, 1] (soft at the resized edges)."""
    had_alpha: bool
    """Whether the mask came from the file's alpha channel (else it was estimated from the background)."""
    source_path: str
    """File path, upload name, or "<array>"."""
    bbox: tuple[int, int, int, int]
    """Object box in source pixels (x0, y0, x1, y1), end exclusive, before recentring."""
    notes: list[str] = field(default_factory=list)
    """Assumptions made on the way (grayscale converted, background estimated, ...)."""


def _err(name: str, problem: str) -> ImageInputError:
    return ImageInputError(f"{name}: {problem}")


def _open_checked(src, name: str, max_pixels: int) -> Image.Image:
    """Open and decode, with the pixel-count check done from the header before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # PIL's own bomb guard warns below 2x its limit and raises above; both become our error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(src)  # lazy: reads the header only
            w, h = im.size
            _check_size(w, h, name, max_pixels)
            im.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _err(name, f"image too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise _err(name, "not an image, or a format Pillow cannot read") from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise _err(name, f"unreadable image (truncated or corrupt): {e}") from e
    return im


def _check_size(w: int, h: int, name: str, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise _err(name, f"empty image ({w}x{h} px)")
    if w * h > max_pixels:
        raise _err(name, f"image is {w}x{h} = {w * h} px, over the limit of {max_pixels} px (decompression-bomb guard)")
    if min(w, h) < MIN_SIDE:
        raise _err(name, f"image is {w}x{h} px; each side must be at least {MIN_SIDE} px")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise _err(name, f"image is {w}x{h} px; aspect ratio over {MAX_ASPECT:g} is not a photo of an object")


def _to_float_rgba(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB [H, W, 3] and alpha [H, W] (or None) as float32 in [0, 1], for every Pillow mode we expect."""
    transposed = ImageOps.exif_transpose(im)
    if transposed is not im:
        notes.append("rotated according to the EXIF orientation tag")
        im = transposed
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        # 16-bit PNGs decode to I;16 or I; values above 255 tell 16-bit data from 8-bit data stored as I.
        scale = 1.0 if mode == "F" else (65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0)
        notes.append(f"{mode} grayscale (high bit depth) scaled by 1/{scale:g} and converted to RGB")
        g = np.clip(arr / scale, 0, 1)
        return np.repeat(g[..., None], 3, axis=-1), None
    if mode == "P":
        has_t = "transparency" in im.info
        im = im.convert("RGBA" if has_t else "RGB")
        notes.append("palette image converted to " + ("RGBA (palette transparency)" if has_t else "RGB"))
    elif mode in ("L", "1"):
        im = im.convert("RGB")
        notes.append("grayscale image converted to RGB")
    elif mode in ("LA", "La", "PA"):
        im = im.convert("RGBA")
        notes.append("grayscale+alpha image converted to RGBA")
    elif mode in ("RGBa",):
        im = im.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        im = im.convert("RGB")
        notes.append(f"{mode} image converted to RGB")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.shape[-1] == 4:
        return arr[..., :3], arr[..., 3]
    return arr, None


def _array_to_float(arr: np.ndarray, name: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise _err(name, f"array of shape {tuple(np.shape(arr))} is not HxW, HxWx1, HxWx2, HxWx3 or HxWx4")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535.0
        notes.append("16-bit array scaled by 1/65535")
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise _err(name, "array contains NaN or infinite values")
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise _err(name, f"float array values must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
        a = np.clip(a, 0, 1)
    else:
        raise _err(name, f"unsupported array dtype {a.dtype}")
    if a.shape[-1] in (1, 2):
        notes.append("grayscale array converted to RGB")
        a = np.concatenate([np.repeat(a[..., :1], 3, -1), a[..., 1:]], -1)
    return a[..., :3], (a[..., 3] if a.shape[-1] == 4 else None)


def _estimate_background_mask(rgb: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Foreground mask of an image without alpha, assuming a roughly uniform background touching the border."""
    h, w, _ = rgb.shape
    b = max(1, round(0.02 * min(h, w)))
    border = np.concatenate(
        [rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)]
    )
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(rgb - bg, axis=-1)
    border_dist = np.linalg.norm(border - bg, axis=-1)
    # Tolerance from the border's own spread (noise, JPEG, vignetting), never below 0.08 (about 20/255 per
    # channel) so that a clean synthetic background does not turn antialiased edges into speckle.
    tol = float(max(0.08, 2.0 * np.percentile(border_dist, 95)))
    if tol > 0.35:
        notes.append(f"background is not uniform (border spread {tol / 2:.2f}); the estimated mask may be poor")
    near_bg = dist <= tol
    # Flood fill from the border: background is what is background-coloured AND connected to the border, so
    # background-coloured parts inside the object (a white label on a white backdrop) stay foreground.
    labels, _ = ndimage.label(near_bg)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels > 0])
    fg = ~background
    # Drop specks (noise) far smaller than the main object.
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= max(16.0, 0.01 * sizes.max())) + 1
        fg = np.isin(lab, keep)
    if not fg.any():
        raise _err(name, "no foreground could be separated from the background (uniform image?)")
    notes.append(
        f"no alpha channel: background colour estimated from the border as RGB "
        f"({', '.join(f'{c:.2f}' for c in bg)}), colour tolerance {tol:.2f}"
    )
    return fg


def _preprocess(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    name: str,
    notes: list[str],
    size: int,
    foreground_ratio: float,
    background_color,
    alpha_threshold: float,
    resize: str = "bilinear_antialias",
) -> PreprocessedImage:
    had_alpha = alpha is not None
    if alpha is not None and alpha.min() >= 1.0 - 1e-6:
        notes.append("alpha channel is fully opaque: ignored, background estimated instead")
        alpha, had_alpha = None, False
    if alpha is not None:
        mask = alpha > alpha_threshold
        if not mask.any():
            raise _err(name, f"image is fully transparent (no alpha above {alpha_threshold})")
    else:
        mask = _estimate_background_mask(rgb, name, notes)
        alpha = mask.astype(np.float32)
    bg = np.asarray(background_color, dtype=np.float32).reshape(3)

    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    # Square crop centred on the object box whose side makes the box's larger side `foreground_ratio` of it.
    side = max(x1 - x0, y1 - y0) / foreground_ratio
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    n = max(1, round(side))
    ox, oy = round(cx - n / 2), round(cy - n / 2)
    canvas = np.empty((n, n, 4), dtype=np.float32)
    canvas[..., :3] = bg
    canvas[..., 3] = 0.0
    h, w = mask.shape
    sx0, sy0, sx1, sy1 = max(0, ox), max(0, oy), min(w, ox + n), min(h, oy + n)
    canvas[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox, :3] = rgb[sy0:sy1, sx0:sx1]  # straight: prepare composites
    canvas[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox, 3] = alpha[sy0:sy1, sx0:sx1]

    t = torch.from_numpy(canvas).permute(2, 0, 1)
    image, mask_out = ProcessorConfig(resolution=size, resize=resize).prepare(t, tuple(bg.tolist()))  # type: ignore[arg-type]
    notes.append(f"object box {x1 - x0}x{y1 - y0} px recentred and scaled to {foreground_ratio:.2f} of {size} px")
    return PreprocessedImage(
        image=image,
        alpha=mask_out,
        had_alpha=had_alpha,
        source_path=name,
        bbox=(x0, y0, x1, y1),
        notes=notes,
    )


def _check_args(size: int, foreground_ratio: float, background_color, alpha_threshold: float) -> None:
    if not MIN_SIDE <= size <= 4096:
        raise ValueError(f"preprocess_image: size must be in [{MIN_SIDE}, 4096], got {size}")
    if not 0.0 < foreground_ratio <= 1.0:
        raise ValueError(f"preprocess_image: foreground_ratio must be in (0, 1], got {foreground_ratio}")
    if len(tuple(background_color)) != 3:
        raise ValueError(f"preprocess_image: background_color must be 3 numbers, got {background_color}")
    if not 0.0 <= alpha_threshold < 1.0:
        raise ValueError(f"preprocess_image: alpha_threshold must be in [0, 1), got {alpha_threshold}")


def preprocess_image(
    path_or_array: str | os.PathLike | np.ndarray,
    *,
    processor: ProcessorConfig | None = None,
    size: int | None = None,
    foreground_ratio: float = 0.85,
    background_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
    max_pixels: int = 4096 * 4096,
    alpha_threshold: float = 0.5,
    resize: Literal["bilinear_antialias", "bicubic_align_corners"] = "bilinear_antialias",
) -> PreprocessedImage:
    """Turn a photo into LRM's source image: mask the object, centre it, scale it, composite, resize.

    The mask is the alpha channel when there is one (RGBA, LA, palette transparency). Without alpha the background
    colour is the median of the border pixels; pixels within a tolerance of it (from the border's spread) that are
    connected to the border are background. The object box is then moved to the image centre and scaled so its
    larger side is `foreground_ratio` of the output, padding with `background_color`.

    Args:
        path_or_array: image file, or an array HxW[xC] (uint8, uint16, or float in [0, 1]; C = 1, 2, 3 or 4).
        processor: the model's processor; when given it sets size, foreground_ratio, resize and (unless its
            background is None) background_color.
        size: output side in pixels.
        foreground_ratio: larger side of the object box / output side.
        background_color: RGB in [0, 1] to composite on.
        max_pixels: largest accepted width * height, checked from the header before decoding.
        alpha_threshold: alpha above which a pixel is object (for the box).
        resize: bilinear antialiased (LRM, TripoSR) or bicubic with align_corners (OpenLRM).

    Returns:
        The image, its mask and what was assumed (`notes`).

    Raises:
        ImageInputError: missing, unreadable or non-image file, truncated data, too many pixels, absurd size,
            fully transparent image, or no separable foreground. The message starts with the file name.
    """
    if processor is not None:
        size, foreground_ratio, resize = processor.resolution, processor.foreground_ratio, processor.resize
        background_color = processor.background or background_color
    if size is None:
        raise ValueError("preprocess_image: give size or processor")
    _check_args(size, foreground_ratio, background_color, alpha_threshold)
    notes: list[str] = []
    if isinstance(path_or_array, np.ndarray):
        name = "<array>"
        if path_or_array.ndim < 2:
            raise _err(name, f"array of shape {path_or_array.shape} is not an image")
        _check_size(int(path_or_array.shape[1]), int(path_or_array.shape[0]), name, max_pixels)
        rgb, alpha = _array_to_float(path_or_array, name, notes)
    else:
        path = Path(path_or_array)
        name = str(path)
        if not path.exists():
            raise _err(name, "file not found")
        if not path.is_file():
            raise _err(name, "not a regular file")
        if path.stat().st_size == 0:
            raise _err(name, "empty file (0 bytes)")
        with open(path, "rb") as fh:
            im = _open_checked(fh, name, max_pixels)
            rgb, alpha = _to_float_rgba(im, notes)
    return _preprocess(rgb, alpha, name, notes, size, foreground_ratio, background_color, alpha_threshold, resize)


def preprocess_image_bytes(
    data: bytes,
    name: str,
    *,
    processor: ProcessorConfig | None = None,
    size: int | None = None,
    foreground_ratio: float = 0.85,
    background_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
    max_pixels: int = 4096 * 4096,
    alpha_threshold: float = 0.5,
    resize: Literal["bilinear_antialias", "bicubic_align_corners"] = "bilinear_antialias",
) -> PreprocessedImage:
    """`preprocess_image` for an in-memory file (a browser upload); `name` is used in messages and `source_path`.

    Raises:
        ImageInputError: as `preprocess_image`, with `name` as the file name.
    """
    if processor is not None:
        size, foreground_ratio, resize = processor.resolution, processor.foreground_ratio, processor.resize
        background_color = processor.background or background_color
    if size is None:
        raise ValueError("preprocess_image: give size or processor")
    _check_args(size, foreground_ratio, background_color, alpha_threshold)
    if not data:
        raise _err(name, "empty upload (0 bytes)")
    notes: list[str] = []
    im = _open_checked(io.BytesIO(data), name, max_pixels)
    rgb, alpha = _to_float_rgba(im, notes)
    return _preprocess(rgb, alpha, name, notes, size, foreground_ratio, background_color, alpha_threshold, resize)
