"""Datasets without a dataset.json, read in place: OpenLRM's render layout and a folder of nerfstudio-data folders.

OpenLRM's layout (checked against 3DTopia/OpenLRM `openlrm/datasets/{base,objaverse,cam_utils}.py`):

```
ROOT/<uid>/rgba/NNN.png        RGBA 8-bit, NNN = 000, 001, ... (OpenLRM opens f"{view:03d}.png")
ROOT/<uid>/pose/NNN.npy        3x4 camera-to-world [R|t], Blender/OpenGL axes (OpenLRM's ray sampler turns its
                               OpenCV camera rays into this frame with diag(1, -1, -1))
ROOT/<uid>/intrinsics.npy      [[fx, fy], [cx, cy], [w, h]] in pixels, one per object
uids.json                      a JSON list of uids (OpenLRM's `meta_path`, one file per split)
```

OpenLRM finds a uid in the first of its `root_dirs` whose `<root>/<uid>/intrinsics.npy` exists; so does this reader
(`extra_roots`). View 000 is the source view. The nerfstudio layout is `ROOT/<id>/transforms.json` per object (each
folder a nerfstudio-data dataset, as `ns-train nerfacto --data ROOT/<id>` reads it).

Splits: explicit uid lists for val / test when given (the rest of the uids are train); otherwise each uid goes to
test when `unit_hash(uid) < test_fraction`, to val when below `test_fraction + val_fraction`, else train, so the
split of an object never depends on which other objects exist. Start-up reads the uid lists (or lists the root
folders) and nothing inside an object; objects are parsed and checked the first time they are used.

Files are opened only inside the object's folder: a symlink leading out of it is refused, `.npy` files are read
without pickle and only up to a small size, and images go through `dataset_format`'s readers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lrm_nerfstudio.data.dataset_format import (
    SPLITS,
    DatasetFormatError,
    DatasetIndex,
    ObjectViews,
    check_image_size,
    read_image_size,
)
from lrm_nerfstudio.data.dataset_format import read_object as read_object_folder
from lrm_nerfstudio.io.sharding import unit_hash

Layout = Literal["auto", "lrm-multiview", "openlrm", "nerfstudio-folders"]
"""How a dataset folder is laid out; `auto` recognises it (dataset.json, then intrinsics.npy, then transforms.json)."""
OPENLRM_LOCATOR = "intrinsics.npy"
"""The file whose presence makes `<root>/<uid>` an OpenLRM object (as OpenLRM's `_locate_datadir`)."""
NERFSTUDIO_LOCATOR = "transforms.json"
MAX_NPY_BYTES = 1 << 16
"""A pose or intrinsics .npy larger than this is not one (refused before reading)."""
_VIEW_NAME = re.compile(r"^(\d{3,})\.png$")
_DETECT_SCAN = 64


def _fail(path: Path | str, problem: str, fix: str = "") -> DatasetFormatError:
    return DatasetFormatError(f"{path}: {problem}" + (f" ({fix})" if fix else ""))


@dataclass
class LayoutOptions:
    """Where the objects of a dataset without dataset.json are, and how they split (shared by ns-train's dataparser,
    lrm-eval and lrm-pack-shards)."""

    layout: Layout = "auto"
    """Dataset layout: auto (dataset.json, else object folders holding intrinsics.npy = openlrm, else transforms.json =
    nerfstudio-folders), or name one."""
    uids: Path | None = None
    """JSON list of the object uids to use (OpenLRM's meta_path); None: every object folder under the roots."""
    val_uids: Path | None = None
    """JSON list of validation uids (explicit split); None: split by uid hash, unless test_uids is given."""
    test_uids: Path | None = None
    """JSON list of test uids (explicit split); None: split by uid hash, unless val_uids is given."""
    extra_roots: tuple[Path, ...] = ()
    """Further root folders searched for a uid after --data, in order (OpenLRM's root_dirs)."""
    val_fraction: float = 0.05
    """Fraction of uids in val under the uid-hash split."""
    test_fraction: float = 0.05
    """Fraction of uids in test under the uid-hash split."""


def copy_layout_options(source: LayoutOptions, target: LayoutOptions) -> None:
    """Set every LayoutOptions field of `target` from `source`."""
    for name in LayoutOptions.__dataclass_fields__:
        setattr(target, name, getattr(source, name))


# ------------------------------------------------------------------------------------------------------- detection
def detect_layout(root: Path, options: LayoutOptions) -> str:
    """The layout of `root`: options.layout when named, else recognised from the first object folders."""
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: dataset folder not found")
    if options.layout != "auto":
        return options.layout
    if (root / "dataset.json").is_file():
        return "lrm-multiview"
    candidates: list[Path] = []
    if options.uids is not None:
        candidates = [root / uid for uid in _read_uid_list(Path(options.uids))[:_DETECT_SCAN]]
    with os.scandir(root) as entries:  # and the first few folders of the root (a uid list may start with absent ones)
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                candidates.append(Path(entry.path))
                if len(candidates) >= 2 * _DETECT_SCAN:
                    break
    for folder in candidates:
        if (folder / OPENLRM_LOCATOR).is_file():
            return "openlrm"
        if (folder / NERFSTUDIO_LOCATOR).is_file():
            return "nerfstudio-folders"
    return "lrm-multiview"  # reading dataset.json then names the missing file


# ------------------------------------------------------------------------------------------------------- listing
def _check_uid(path: Path, uid: object) -> str:
    if not isinstance(uid, str) or not uid:
        raise _fail(path, f"holds {uid!r}; uids must be non-empty strings")
    if "/" in uid or "\\" in uid or uid.startswith("."):
        raise _fail(path, f"holds {uid!r}; a uid must be a plain folder name")
    return uid


def _read_uid_list(path: Path) -> list[str]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise _fail(path, "uid list does not exist") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, f"cannot read the uid list ({err})", "it must be a JSON list of uids") from err
    if not isinstance(data, list):
        raise _fail(path, f"a uid list must be a JSON list, got {type(data).__name__}")
    uids = [_check_uid(path, u) for u in data]
    if len(set(uids)) != len(uids):
        seen: set[str] = set()
        dup = next(u for u in uids if u in seen or seen.add(u))
        raise _fail(path, f"uid {dup!r} is listed twice")
    return uids


def _folders_with(roots: list[Path], locator: str, marker: str | None = None) -> list[str]:
    """Sorted names of the sub-folders of `roots` that hold `locator` (or the folder `marker`: an object missing its
    locator is then listed, and reported when used, instead of silently left out)."""
    found: set[str] = set()
    for root in roots:
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name in found or not entry.is_dir():
                    continue
                if os.path.isfile(os.path.join(entry.path, locator)) or (
                    marker is not None and os.path.isdir(os.path.join(entry.path, marker))
                ):
                    found.add(entry.name)
    return sorted(found)


def hash_splits(uids: list[str], val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """train / val / test by uid hash (module docstring); order within a split follows `uids`."""
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for uid in uids:
        h = unit_hash(uid)
        splits["test" if h < test_fraction else "val" if h < test_fraction + val_fraction else "train"].append(uid)
    return splits


class FolderLayout:
    """An OpenLRM or nerfstudio-folders dataset: its listing (a DatasetIndex) and per-object reading."""

    def __init__(self, root: Path, kind: str, options: LayoutOptions) -> None:
        if kind not in ("openlrm", "nerfstudio-folders"):
            raise ValueError(f"unknown folder layout {kind!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(options, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if options.val_fraction + options.test_fraction > 1.0:
            raise ValueError("val_fraction + test_fraction must be at most 1")
        self.kind = kind
        self.locator = OPENLRM_LOCATOR if kind == "openlrm" else NERFSTUDIO_LOCATOR
        self.roots = [Path(root), *(Path(r) for r in options.extra_roots)]
        for r in self.roots:
            if not r.is_dir():
                raise _fail(r, "dataset root is not a directory")
        self._where: dict[str, Path] = {}
        uids = _read_uid_list(Path(options.uids)) if options.uids is not None else None
        val = _read_uid_list(Path(options.val_uids)) if options.val_uids is not None else None
        test = _read_uid_list(Path(options.test_uids)) if options.test_uids is not None else None
        if uids is None:
            listed = _folders_with(self.roots, self.locator, "rgba" if kind == "openlrm" else None)
            if not listed and val is None and test is None:
                raise _fail(
                    self.roots[0], f"no object folders holding {self.locator} (layout {kind})",
                    "pass --data the folder whose sub-folders are the objects",
                )  # fmt: skip
            uids = listed
        if val is None and test is None:
            splits = hash_splits(uids, options.val_fraction, options.test_fraction)
        else:
            held = set(val or []) | set(test or [])
            both = set(val or []) & set(test or [])
            if both:
                raise _fail(Path(options.test_uids or ""), f"uid {min(both)!r} is in both val and test lists")
            splits = {"train": [u for u in uids if u not in held], "val": list(val or []), "test": list(test or [])}
        if not any(splits.values()):
            raise _fail(self.roots[0], "no objects listed in any split")
        meta = {"format": kind, "layout": kind, "roots": [str(r) for r in self.roots]}
        self.index = DatasetIndex(root=self.roots[0], splits=splits, meta=meta)

    def object_folder(self, uid: str) -> Path:
        """The folder of `uid`: in the first root holding `<root>/<uid>/<locator>` (the first root when none)."""
        hit = self._where.get(uid)
        if hit is None:
            hit = next((r / uid for r in self.roots if (r / uid / self.locator).is_file()), None)
            hit = hit or next((r / uid for r in self.roots if (r / uid).is_dir()), self.roots[0] / uid)
            if len(self._where) < 100_000:
                self._where[uid] = hit
        return hit

    def read_object(self, uid: str, check_images: bool) -> ObjectViews:
        """One object's views, validated (image headers too with `check_images`).

        Raises:
            DatasetFormatError: naming the bad file and the problem.
        """
        folder = self.object_folder(uid)
        if self.kind == "openlrm":
            return read_openlrm_object(folder, uid, check_images)
        obj = read_object_folder(folder, uid, check_images=check_images)
        for path in [*obj.image_paths, *(obj.depth_paths or []), *([obj.mesh_path] if obj.mesh_path else [])]:
            _inside(folder, path)
        return obj


# ------------------------------------------------------------------------------------------------------- OpenLRM
def _inside(folder: Path, path: Path) -> Path:
    """`path`, if it resolves inside `folder` (no `..`, no symlink out); else DatasetFormatError."""
    try:
        real = Path(os.path.realpath(path))
        base = Path(os.path.realpath(folder))
    except OSError as err:
        raise _fail(path, f"cannot resolve the path ({err})") from err
    if real != base and base not in real.parents:
        raise _fail(path, f"leads outside the object folder {folder}", "files of an object must lie inside its folder")
    return path


def load_small_npy(path: Path, folder: Path, what: str) -> np.ndarray:
    """A numeric .npy array of at most MAX_NPY_BYTES, read without pickle, from inside `folder`."""
    _inside(folder, path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise _fail(path, f"{what} file does not exist") from err
    except OSError as err:
        raise _fail(path, f"cannot read {what} ({err})") from err
    if size > MAX_NPY_BYTES:
        raise _fail(path, f"{what} file is {size} bytes, too large for a {what}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # a pickled object array raises ValueError here
        raise _fail(path, f"cannot read {what} as a .npy array ({err})", "save it with numpy.save") from err
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise _fail(path, f"{what} must be a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
    return arr.astype(np.float64)


def check_openlrm_pose(path: Path, pose: np.ndarray) -> np.ndarray:
    """The 3x4 camera-to-world of one pose file (4x4 with last row 0 0 0 1 accepted); raises if unusable."""
    if pose.shape not in ((3, 4), (4, 4)):
        raise _fail(path, f"pose must be a 3x4 camera-to-world matrix, got shape {pose.shape}")
    if not np.isfinite(pose).all():
        raise _fail(path, "pose has non-finite values (NaN or inf)")
    if pose.shape == (4, 4) and not np.allclose(pose[3], [0, 0, 0, 1], atol=1e-5):
        raise _fail(path, f"pose's last row must be [0, 0, 0, 1], got {pose[3].tolist()}")
    rot = pose[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
        raise _fail(path, "pose is not rigid (rotation not orthonormal with det +1)", "poses must be camera-to-world")
    return pose[:3, :4]


def check_openlrm_intrinsics(path: Path, intr: np.ndarray) -> list[float]:
    """fx, fy, cx, cy, w, h from `[[fx, fy], [cx, cy], [w, h]]`; raises if unusable."""
    if intr.shape != (3, 2):
        raise _fail(path, f"intrinsics must be [[fx, fy], [cx, cy], [w, h]] (shape 3x2), got shape {intr.shape}")
    if not np.isfinite(intr).all():
        raise _fail(path, "intrinsics have non-finite values")
    (fx, fy), (cx, cy), (w, h) = intr.tolist()
    if w <= 0 or h <= 0 or w != int(w) or h != int(h):
        raise _fail(path, f"image size w, h must be positive integers, got w={w}, h={h}")
    if fx <= 0 or fy <= 0:
        raise _fail(path, f"focal lengths must be positive, got fx={fx}, fy={fy}")
    if not (0.0 <= cx <= w and 0.0 <= cy <= h):
        raise _fail(path, f"principal point (cx={cx}, cy={cy}) lies outside the {int(w)}x{int(h)} image")
    return [fx, fy, cx, cy, w, h]


def read_openlrm_object(folder: Path, uid: str, check_images: bool = True) -> ObjectViews:
    """Parse one OpenLRM object folder: views = the rgba/NNN.png files, each with its pose/NNN.npy.

    Raises:
        DatasetFormatError: missing folder, intrinsics, view 000 or a pose; bad shapes, NaN, unreadable files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(folder, "object folder does not exist", "is the uid listed by mistake, or in another root?")
    intr = check_openlrm_intrinsics(folder / "intrinsics.npy", load_small_npy(folder / "intrinsics.npy", folder,
                                                                               "intrinsics"))  # fmt: skip
    rgba_dir = _inside(folder, folder / "rgba")
    try:
        names = sorted((m for e in os.scandir(rgba_dir) if (m := _VIEW_NAME.match(e.name))), key=lambda m: int(m[1]))
    except FileNotFoundError as err:
        raise _fail(
            rgba_dir, "rgba folder does not exist", "an OpenLRM object has rgba/000.png, rgba/001.png, ..."
        ) from err
    except OSError as err:
        raise _fail(rgba_dir, f"cannot list the views ({err})") from err
    if not names or int(names[0][1]) != 0:
        raise _fail(rgba_dir / "000.png", "view 000 (the source view) does not exist")
    images, c2ws = [], []
    for m in names:
        image = _inside(folder, rgba_dir / m[0])
        pose_path = folder / "pose" / f"{m[1]}.npy"
        c2ws.append(check_openlrm_pose(pose_path, load_small_npy(pose_path, folder, "pose")))
        images.append(image)
    obj = ObjectViews(
        object_id=uid,
        root=folder,
        image_paths=images,
        c2w=np.stack(c2ws).astype(np.float32),
        intrinsics=np.tile(np.asarray(intr, dtype=np.float64), (len(images), 1)),
    )
    if check_images:
        for i, path in enumerate(images):
            w, h, _ = read_image_size(path)
            check_image_size(obj, i, w, h)
    return obj
