"""The lrm-multiview dataset format (docs/DATA.md): reading and validating `dataset.json`, per-object
`transforms.json`, RGBA images and depth maps.

Every problem raises :class:`DatasetFormatError` whose message starts with the offending path, then says what is
wrong and what to do. Nothing here caches decoded images: callers load what they need when they need it.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol, runtime_checkable

import numpy as np
from jaxtyping import Float
from PIL import Image, UnidentifiedImageError

DATASET_FORMAT = "lrm-multiview"
"""Value of the "format" key of dataset.json."""
SPLITS = ("train", "val", "test")
"""Split names dataset.json may list."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""File suffixes that `--data` treats as a single image (inference mode)."""
DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest width * height of a dataset image, checked from its header before any pixel is decoded (a shared
dataset must not be able to make a reader allocate gigabytes); the photo path (`image_preprocess`) uses the same."""
PATH_FIELDS = ("file_path", "depth_file_path", "normal_file_path", "mask_file_path")
"""Per-frame keys of transforms.json that name files (each must stay inside the object folder)."""

_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ACCEPTED_CAMERA_MODELS = ("PINHOLE", "OPENCV", "SIMPLE_PINHOLE")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_warned_no_alpha = False


class DatasetFormatError(ValueError):
    """Bad data on disk; the message starts with the offending path."""


def _fail(path: Path | str, problem: str, fix: str = "") -> DatasetFormatError:
    msg = f"{path}: {problem}"
    if fix:
        msg += f" ({fix})"
    return DatasetFormatError(msg)


@runtime_checkable
class MemberSource(Protocol):
    """Where an object's files live when not in a folder (a tar shard, `lrm_nerfstudio.data.shards`).

    Paths stay paths: `<shard.tar>/<object_id>/<file>`, so every error names the shard and the member.
    """

    def exists(self, path: Path) -> bool:
        """Whether the member at `path` exists."""
        ...

    def open(self, path: Path) -> io.BufferedIOBase:
        """The member's bytes; raises DatasetFormatError naming the shard and member when unreadable."""
        ...


def _is_file(path: Path, source: MemberSource | None) -> bool:
    return path.is_file() if source is None else source.exists(path)


def _open(path: Path, source: MemberSource | None) -> Path | io.BufferedIOBase:
    return path if source is None else source.open(path)


def is_image_path(path: Path | str) -> bool:
    """Whether `path` names a single image file (the `--data photo.png` inference mode)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()


# ------------------------------------------------------------------------------------------------------ containment
def contained_path(
    transforms: Path, field: str, value: str, root: Path, dataset_root: Path | None, source: MemberSource | None
) -> Path:
    """`root / value` for a path read from `transforms` (key `field`), refused unless it stays inside the object.

    The path must be relative and must not climb out of the object folder `root` (`..`). In a folder dataset, every
    symlink on the way is followed and the real target must lie inside `dataset_root` (so objects may share files
    by symlink, but nothing outside the dataset is ever read). Shard members are checked by name only: a tar shard
    holds nothing else.

    Raises:
        DatasetFormatError: naming `transforms`, the field and the path.
    """
    why = ""
    if value.startswith(("/", "\\")) or PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive:
        why = "is absolute"
    elif "\x00" in value:
        why = "holds a NUL byte"
    else:
        parts = PurePosixPath(posixpath.normpath(value.replace("\\", "/"))).parts
        if not parts or parts[0] == ".." or parts == (".",):
            why = "leaves the object folder"
    path = root / value
    if not why and source is None:
        real, base = os.path.realpath(path), os.path.realpath(dataset_root if dataset_root is not None else root)
        if os.path.commonpath([real, base]) != base:
            why = f"resolves to {real}, outside the dataset folder {base}"
    if why:
        raise _fail(
            transforms,
            f"{field} {value!r} {why}; dataset files must lie inside their object folder",
            "use a relative path such as images/000.png and copy the file into the dataset",
        )
    return path


# ----------------------------------------------------------------------------------------------------------- images
def _check_mode(path: Path, mode: str) -> bool:
    """Raises for unsupported modes; returns whether the image has alpha."""
    if mode in _GRAY_MODES:
        raise _fail(path, f"grayscale image (PIL mode {mode!r}) is not supported", "save it as RGBA (or RGB)")
    if mode in ("RGBA", "RGBa", "PA"):
        return True
    if mode in ("RGB", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return False
    raise _fail(path, f"unsupported image mode {mode!r}", "save it as 8- or 16-bit RGBA PNG")


def reset_alpha_warning() -> None:
    """Re-arm the one-time "RGB without alpha" warning (for tests)."""
    global _warned_no_alpha
    _warned_no_alpha = False


def _warn_no_alpha(path: Path) -> None:
    global _warned_no_alpha
    if not _warned_no_alpha:
        _warned_no_alpha = True
        warnings.warn(
            f"{path}: image has no alpha channel; assuming alpha = 1 everywhere, i.e. the background is part of "
            "the object (warned once for all such images)",
            UserWarning,
            stacklevel=3,
        )


def read_image_size(
    path: Path | str, source: MemberSource | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int, bool]:
    """Reads only the header of an image (a member of `source` when given).

    Returns:
        (width, height, has_alpha).

    Raises:
        DatasetFormatError: missing, undecodable, grayscale or otherwise unsupported image, or one of more than
            `max_pixels` pixels.
    """
    path = Path(path)
    if not _is_file(path, source):
        raise _fail(path, "image file does not exist", "check file_path in transforms.json")
    with _open_image(path, source, max_pixels) as img:
        mode, size = img.mode, img.size
        if mode == "P":
            mode = "PA" if "transparency" in img.info else "P"
    has_alpha = _check_mode(path, mode)
    return size[0], size[1], has_alpha


@contextmanager
def _open_image(path: Path, source: MemberSource | None, max_pixels: int, what: str = "image") -> Iterator[Image.Image]:
    """The image opened lazily (header only), refused before decoding when over `max_pixels`.

    PIL's own decompression-bomb guard (an error above twice its limit, a warning above it) becomes the same
    DatasetFormatError, as does every decoding error raised inside the `with` block.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_open(path, source)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise _fail(
                        path,
                        f"{what} too large: {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (not decoded)",
                        "downscale it, or raise the dataparser's max_pixels if the file is trusted",
                    )
                yield img
    except DatasetFormatError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _fail(path, f"{what} too large to decode safely ({err})", "downscale it") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise _fail(path, f"cannot decode {what} ({err})", "re-export it as PNG") from err


def load_rgba(
    path: Path | str, source: MemberSource | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Float[np.ndarray, "H W 4"]:
    """Loads an RGBA image (a member of `source` when given) as float32 in [0, 1].

    8- and 16-bit files are accepted. RGB files without alpha get alpha = 1 (with a one-time warning: the
    background is then taken to be part of the object). Grayscale images are rejected, and so is any image of more
    than `max_pixels` pixels, from its header, before decoding.

    Raises:
        DatasetFormatError: missing, undecodable, grayscale, oversized or otherwise unsupported image.
    """
    path = Path(path)
    if not _is_file(path, source):
        raise _fail(path, "image file does not exist", "check file_path in transforms.json")
    with _open_image(path, source, max_pixels) as img:
        mode = img.mode
        if mode == "P":
            mode = "PA" if "transparency" in img.info else "P"
        has_alpha = _check_mode(path, mode)
        img.load()
        if img.mode not in ("RGBA", "RGB"):
            img = img.convert("RGBA" if has_alpha else "RGB")
        arr = np.asarray(img)
    # PIL reads 16-bit colour PNGs as 8-bit RGB(A); a uint16 array (other readers) is scaled by its own range.
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    out = np.empty((arr.shape[0], arr.shape[1], 4), dtype=np.float32)
    out[..., :3] = arr[..., :3].astype(np.float32) / scale
    if has_alpha and arr.shape[-1] == 4:
        out[..., 3] = arr[..., 3].astype(np.float32) / scale
    else:
        _warn_no_alpha(path)
        out[..., 3] = 1.0
    return out


def load_depth(
    path: Path | str,
    scale_factor: float = 1e-3,
    source: MemberSource | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Float[np.ndarray, "H W"]:
    """Loads a 16-bit depth PNG as z-depth in world units (`value * scale_factor`; 0 = no hit)."""
    path = Path(path)
    if not _is_file(path, source):
        raise _fail(path, "depth file does not exist", "check depth_file_path in transforms.json")
    with _open_image(path, source, max_pixels, what="depth image") as img:
        arr = np.asarray(img)
    if arr.ndim != 2:
        raise _fail(path, f"depth image must be single-channel, got shape {arr.shape}", "save 16-bit grayscale")
    return arr.astype(np.float32) * float(scale_factor)


# ------------------------------------------------------------------------------------------------------ dataset.json
@dataclass(frozen=True)
class DatasetIndex:
    """Contents of dataset.json."""

    root: Path
    """Dataset folder."""
    splits: dict[str, list[str]]
    """Split name -> object ids (every split of SPLITS present, possibly empty)."""
    meta: dict[str, Any]
    """Other top-level keys (distance range, generator settings, ...)."""


def _read_json(path: Path, what: str, source: MemberSource | None = None) -> Any:
    if not _is_file(path, source):
        raise _fail(path, f"{what} does not exist", "is --data the dataset folder?")
    try:
        if source is not None:
            return json.loads(source.open(path).read().decode("utf-8"))
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise _fail(path, f"malformed JSON in {what}: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(path, f"cannot read {what}: {err}") from err


OBJECT_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
"""What an object id may be: a folder name that is also safe to show (the viewer lists ids) and to pass to a shell."""


def _check_object_id(path: Path, split: str, oid: Any) -> str:
    if not isinstance(oid, str) or not oid:
        raise _fail(path, f"splits.{split} holds {oid!r}; object ids must be non-empty strings")
    if not OBJECT_ID.fullmatch(oid):
        raise _fail(path, f"splits.{split} holds {oid!r}; an object id must be a plain folder name: letters, digits, "
                          "'_', '-' and '.' (not first), at most 128 characters")  # fmt: skip
    return oid


def read_dataset_json(root: Path | str) -> DatasetIndex:
    """Reads and validates `root/dataset.json` (no object folder is opened).

    Raises:
        DatasetFormatError: missing or malformed file, wrong format, bad/duplicate ids, no objects at all.
    """
    root = Path(root)
    path = root / "dataset.json"
    data = _read_json(path, "dataset.json")
    if not isinstance(data, dict):
        raise _fail(path, f"top level must be an object, got {type(data).__name__}")
    fmt = data.get("format")
    if fmt != DATASET_FORMAT:
        raise _fail(path, f"'format' is {fmt!r}, expected {DATASET_FORMAT!r}", "see docs/DATA.md")
    splits_in = data.get("splits")
    if not isinstance(splits_in, dict):
        raise _fail(path, "missing key 'splits' (an object of split name -> list of object ids)")
    unknown = set(splits_in) - set(SPLITS)
    if unknown:
        raise _fail(path, f"unknown split(s) {sorted(unknown)}; allowed: {list(SPLITS)}")
    seen: dict[str, str] = {}
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        ids = splits_in.get(split, [])
        if not isinstance(ids, list):
            raise _fail(path, f"splits.{split} must be a list of object ids, got {type(ids).__name__}")
        if split in splits_in and len(ids) == 0:
            raise _fail(path, f"split {split!r} is empty", "list at least one object or drop the split")
        for oid in ids:
            _check_object_id(path, split, oid)
            if oid in seen:
                where = "twice in" if seen[oid] == split else f"in both {seen[oid]!r} and"
                raise _fail(path, f"object id {oid!r} is listed {where} split {split!r}")
            seen[oid] = split
        splits[split] = list(ids)
    if not seen:
        raise _fail(path, "no objects listed in any split")
    meta = {k: v for k, v in data.items() if k not in ("splits",)}
    return DatasetIndex(root=root, splits=splits, meta=meta)


# ---------------------------------------------------------------------------------------------------- transforms.json
@dataclass
class ObjectViews:
    """One object's views as read from its transforms.json (no pixels)."""

    object_id: str
    """Object id (the folder name)."""
    root: Path
    """The object folder."""
    image_paths: list[Path]
    """One RGBA image per view; view 0 is the canonical source view in generated data."""
    c2w: Float[np.ndarray, "V 3 4"]
    """Camera-to-world (OpenGL) per view."""
    intrinsics: Float[np.ndarray, "V 6"]
    """fx, fy, cx, cy, width, height per view (pixels)."""
    depth_paths: list[Path] | None = None
    """16-bit depth PNG per view, if every frame has one."""
    mesh_path: Path | None = None
    """Ground-truth mesh, if given."""
    source: MemberSource | None = None
    """Where the files are when not in a folder: the object's tar shard (its paths are then shard member paths)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Largest width * height its images may have (checked from the header before decoding)."""

    def __len__(self) -> int:
        return len(self.image_paths)


def _number(path: Path, where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"{where}'{key}' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise _fail(path, f"{where}'{key}' is not finite ({value!r})")
    return float(value)


def _intrinsics(path: Path, top: dict[str, Any], frame: dict[str, Any], i: int) -> list[float]:
    out = []
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        if key in frame:
            out.append(_number(path, f"frames[{i}].", key, frame[key]))
        elif key in top:
            out.append(_number(path, "", key, top[key]))
        else:
            raise _fail(path, f"missing intrinsic '{key}' (neither top level nor frames[{i}])")
    fx, fy, cx, cy, w, h = out
    where = f"frames[{i}]: "
    if w <= 0 or h <= 0 or w != int(w) or h != int(h):
        raise _fail(path, f"{where}w, h must be positive integers, got w={w}, h={h}")
    if fx <= 0 or fy <= 0:
        raise _fail(path, f"{where}focal lengths must be positive, got fl_x={fx}, fl_y={fy}")
    if not (0.0 <= cx <= w) or not (0.0 <= cy <= h):
        raise _fail(path, f"{where}principal point (cx={cx}, cy={cy}) lies outside the {int(w)}x{int(h)} image")
    return out


def _transform(path: Path, frame: dict[str, Any], i: int) -> np.ndarray:
    m = frame.get("transform_matrix")
    if m is None:
        raise _fail(path, f"frames[{i}] has no 'transform_matrix'")
    try:
        arr = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise _fail(path, f"frames[{i}].transform_matrix is not a numeric matrix") from err
    if arr.shape not in ((4, 4), (3, 4)):
        raise _fail(path, f"frames[{i}].transform_matrix must be 4x4 (or 3x4), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise _fail(path, f"frames[{i}].transform_matrix has non-finite values")
    if arr.shape == (4, 4) and not np.allclose(arr[3], [0, 0, 0, 1], atol=1e-5):
        raise _fail(path, f"frames[{i}].transform_matrix last row must be [0, 0, 0, 1], got {arr[3].tolist()}")
    rot = arr[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
        raise _fail(
            path,
            f"frames[{i}].transform_matrix is not rigid (rotation not orthonormal with det +1)",
            "poses must be camera-to-world without scale; normalise the object instead",
        )
    return arr[:3, :4]


def read_object(
    root: Path | str,
    object_id: str | None = None,
    check_images: bool = True,
    source: MemberSource | None = None,
    dataset_root: Path | str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ObjectViews:
    """Reads and validates one object folder's transforms.json (or its members in `source`, a shard).

    Every file it names must stay inside the object folder (`contained_path`), whatever `check_images` says.

    Args:
        root: the object folder (holding transforms.json).
        object_id: its id; defaults to the folder name.
        check_images: also open every image header (existence, decodability, size matching w/h, channels, at
            most `max_pixels` pixels). Without it only transforms.json is read; image problems surface when the
            image is loaded.
        source: the shard holding the object's files; `root` is then `<shard>/<object_id>`.
        dataset_root: the folder no file may resolve outside of (symlinks followed); defaults to the parent of
            `root` when that holds a dataset.json, else `root` itself.
        max_pixels: largest width * height of an image, kept in the result for the loaders.

    Raises:
        DatasetFormatError: on any problem, naming the file.
    """
    root = Path(root)
    path = root / "transforms.json"
    if source is None and not root.is_dir():
        raise _fail(root, "object folder does not exist", "is it listed in dataset.json by mistake?")
    if source is None:
        if dataset_root is None:
            dataset_root = root.parent if (root.parent / "dataset.json").is_file() else root
        contained_path(root.parent / "dataset.json", "object folder", root.name, root.parent, dataset_root, None)
        contained_path(path, "transforms.json", "transforms.json", root, dataset_root, None)
    droot = Path(dataset_root) if dataset_root is not None else None

    def inside(field: str, value: str) -> Path:
        return contained_path(path, field, value, root, droot, source)

    data = _read_json(path, "transforms.json", source)
    if not isinstance(data, dict):
        raise _fail(path, f"top level must be an object, got {type(data).__name__}")
    model = data.get("camera_model", "PINHOLE")
    if model not in _ACCEPTED_CAMERA_MODELS:
        raise _fail(path, f"camera_model {model!r} is not supported", "use PINHOLE")
    for key in _DISTORTION_KEYS:
        if key in data and data[key] not in (0, 0.0):
            raise _fail(path, f"non-zero distortion '{key}'={data[key]!r}; only undistorted PINHOLE is supported")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise _fail(path, "missing or empty 'frames' list")
    images: list[Path] = []
    depths: list[Path] = []
    c2ws, intr = [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise _fail(path, f"frames[{i}] must be an object")
        fp = frame.get("file_path")
        if not isinstance(fp, str) or not fp:
            raise _fail(path, f"frames[{i}] has no string 'file_path'")
        c2ws.append(_transform(path, frame, i))
        intr.append(_intrinsics(path, data, frame, i))
        images.append(inside(f"frames[{i}].file_path", fp))
        for key in PATH_FIELDS[1:]:
            other = frame.get(key)
            if other is not None and not isinstance(other, str):
                raise _fail(path, f"frames[{i}].{key} must be a string")
            if other:
                checked = inside(f"frames[{i}].{key}", other)
                if key == "depth_file_path":
                    depths.append(checked)
    if depths and len(depths) != len(images):
        raise _fail(path, "depth_file_path is given for some frames but not all")
    mesh = data.get("mesh_path")
    if mesh is not None and not isinstance(mesh, str):
        raise _fail(path, "'mesh_path' must be a string")
    mesh_path = inside("mesh_path", mesh) if mesh else None
    obj = ObjectViews(
        object_id=object_id if object_id is not None else root.name,
        root=root,
        image_paths=images,
        c2w=np.stack(c2ws).astype(np.float32),
        intrinsics=np.asarray(intr, dtype=np.float64),
        depth_paths=depths or None,
        mesh_path=mesh_path,
        source=source,
        max_pixels=max_pixels,
    )
    if check_images:
        for i, img_path in enumerate(images):
            w, h, has_alpha = read_image_size(img_path, source, max_pixels)
            check_image_size(obj, i, w, h)
            if not has_alpha:
                _warn_no_alpha(img_path)
        for dp in depths:
            if not _is_file(dp, source):
                raise _fail(dp, "depth file does not exist", f"referenced by {path}")
    return obj


def check_image_size(obj: ObjectViews, view: int, width: int, height: int) -> None:
    """Raises if a decoded image's size disagrees with transforms.json's w/h for that view."""
    w, h = int(obj.intrinsics[view, 4]), int(obj.intrinsics[view, 5])
    if (width, height) != (w, h):
        raise _fail(
            obj.image_paths[view],
            f"image is {width}x{height} but {obj.root / 'transforms.json'} says w={w}, h={h}",
            "fix w/h (and the focal lengths) in transforms.json",
        )


def object_dirs(index: DatasetIndex, ids: Sequence[str]) -> list[Path]:
    """Folders of the given object ids."""
    return [index.root / oid for oid in ids]


# ------------------------------------------------------------------------------------------------------------ meshes
def load_object_mesh(obj: ObjectViews):
    """The object's ground-truth mesh (`mesh_path` of its transforms.json), from its folder or from its tar shard.

    Returns:
        A `trimesh.Trimesh` in the object's world coordinates (a scene's geometries concatenated).

    Raises:
        DatasetFormatError: no `mesh_path`, or the file is missing, unreadable, empty or has non-finite vertices.
    """
    import trimesh

    transforms = obj.root / "transforms.json"
    path = obj.mesh_path
    if path is None:
        raise _fail(transforms, "has no 'mesh_path' (no ground-truth mesh)")
    if not _is_file(path, obj.source):
        raise _fail(path, "mesh file does not exist", f"named by mesh_path in {transforms}")
    file_type = path.suffix.lstrip(".").lower()
    try:
        if obj.source is None:
            mesh = trimesh.load(path, file_type=file_type, force="mesh", process=False)
        else:
            mesh = trimesh.load(obj.source.open(path), file_type=file_type, force="mesh", process=False)
    except DatasetFormatError:
        raise
    except Exception as err:  # trimesh raises many types for bad files
        raise _fail(path, f"cannot read the mesh ({type(err).__name__}: {err})", "re-export it as PLY") from err
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise _fail(path, "mesh has no triangles", "re-export it as PLY")
    if not np.isfinite(mesh.vertices).all():
        raise _fail(path, "mesh has non-finite vertex coordinates")
    return mesh
