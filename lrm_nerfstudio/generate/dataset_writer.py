"""Writing the multi-view dataset of docs/DATA.md: atomic object folders, splits, dataset.json, a resumable job loop.

Layout written here:
```
DATASET/dataset.json            format, version, splits, scene_box, camera ranges, generator config
DATASET/<id>/transforms.json    nerfstudio format, PINHOLE, per-frame fl_x/fl_y, shared cx/cy/w/h, mesh_path,
                                train/val/test_filenames (a per-view split for nerfstudio's own dataparser)
DATASET/<id>/images/NNN.png     RGBA 8-bit, alpha = mask (no separate mask files)
DATASET/<id>/depth/NNN.png      uint16 z-depth in millimetres (nerfstudio depth_unit_scale_factor 1e-3), 0 = miss
DATASET/<id>/normals/NNN.png    RGB 8-bit world-space normals as (n + 1) / 2, 0 = miss
DATASET/<id>/mesh.ply           ground-truth mesh in the same coordinates, with vertex colours
```
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from lrm_nerfstudio.generate.renderer import Lighting, MeshRenderer, View, write_view
from lrm_nerfstudio.io.atomic import atomic_write_text
from lrm_nerfstudio.progress import stage_progress

DATASET_FORMAT = "lrm-multiview"
DATASET_VERSION = 1
SCENE_BOX = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
TMP_PREFIX = ".tmp-"

CONSOLE = Console(stderr=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name in the same folder, then rename over `path` (readers never see half a file)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class OutputDirError(ValueError):
    """An --output that cannot be a dataset folder; the message names it (printed as one line, no traceback)."""


def check_output_dir(root: Path) -> None:
    """Create the output folder, or raise OutputDirError if it cannot be one."""
    if root.exists() and not root.is_dir():
        raise OutputDirError(f"{root}: output exists and is not a directory; choose another --output")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"{root}: cannot create the output directory ({err})") from err
    if not os.access(root, os.W_OK):
        raise OutputDirError(f"{root}: output directory is not writable")


def clean_stale_temporaries(root: Path) -> None:
    """Remove half-written object folders left by a killed run (their objects are simply made again)."""
    for path in root.glob(f"{TMP_PREFIX}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def finished_stamp(root: Path, object_id: str) -> str | None:
    """The generator stamp of a finished object folder, or None if the object is not finished."""
    path = root / object_id / "transforms.json"
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text()).get("generator", {}).get("stamp", ""))
    except (OSError, json.JSONDecodeError):
        return ""


def vertex_parts(faces: np.ndarray, face_part: np.ndarray, num_vertices: int) -> np.ndarray:
    """A part index per vertex (from any face using it), for colouring the ground-truth mesh."""
    out = np.zeros(num_vertices, dtype=np.int64)
    out[faces.reshape(-1)] = np.repeat(face_part, 3)
    return out


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def write_object_folder(
    root: Path,
    object_id: str,
    renderer: MeshRenderer,
    views: Sequence[View],
    lighting: Lighting,
    resolution: int,
    vertex_colors: np.ndarray | None,
    extra: dict[str, Any],
    compress_level: int = 1,
) -> None:
    """Render all views and write the object folder atomically (temporary folder, then one rename)."""
    import trimesh

    tmp = root / f"{TMP_PREFIX}{object_id}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("images", "depth", "normals"):
        (tmp / sub).mkdir(parents=True)
    w = h = int(resolution)
    frames = []
    for index, view in enumerate(views):
        fx = view.focal * w
        out = renderer.render(view.c2w, fx, fx, w / 2, h / 2, w, h, lighting)
        paths = write_view(tmp, index, out, compress_level)
        frames.append({**paths, "fl_x": fx, "fl_y": fx, "transform_matrix": (np.round(view.c2w, 8) + 0.0).tolist()})
    colors = None
    if vertex_colors is not None:
        colors = np.concatenate(
            [np.rint(np.clip(vertex_colors, 0, 1) * 255), np.full((len(vertex_colors), 1), 255)], axis=1
        ).astype(np.uint8)
    mesh = trimesh.Trimesh(renderer.vertices, renderer.faces, vertex_colors=colors, process=False)
    (tmp / "mesh.ply").write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary", include_attributes=False))
    held_out = view_holdout([f["file_path"] for f in frames])
    transforms = {
        "camera_model": "PINHOLE",
        "w": w,
        "h": h,
        "cx": w / 2,
        "cy": h / 2,
        "mesh_path": "mesh.ply",
        "scene_box": SCENE_BOX,
        "source_view": 0,
        **extra,
        "train_filenames": [f["file_path"] for f in frames if f["file_path"] not in held_out],
        "val_filenames": held_out,
        "test_filenames": held_out,
        "frames": frames,
    }
    (tmp / "transforms.json").write_text(json.dumps(transforms, indent=2) + "\n")
    final = root / object_id
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / "transforms.json").is_file():  # someone else finished it first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def view_holdout(paths: Sequence[str]) -> list[str]:
    """Per-object views nerfstudio holds out for its own eval (per-scene baselines): the last view and every
    8th view after view 0. View 0 (the canonical source view) is always train. One view: it is in every split."""
    n = len(paths)
    if n == 1:
        return [paths[0]]
    return [p for i, p in enumerate(paths) if i == n - 1 or (i > 0 and i % 8 == 0)]


def assign_splits(ids: Sequence[str], holdout_fraction: float = 0.05) -> dict[str, list[str]]:
    """Deterministic splits. With n >= 3 objects: k = max(1, round(holdout_fraction * n)) objects each for val and
    test (the last k are test, the k before them val), all the rest train. With n < 3 there is nothing to hold out:
    every object is train and the held-out splits are left out (an object may be listed in one split only)."""
    ids = list(ids)
    n = len(ids)
    if n < 3:
        return {"train": ids}
    k = max(1, round(holdout_fraction * n))
    k = min(k, (n - 1) // 2)
    return {"train": ids[: n - 2 * k], "val": ids[n - 2 * k : n - k], "test": ids[n - k :]}


def write_dataset_json(
    root: Path,
    ids: Sequence[str],
    holdout_fraction: float,
    extra: dict[str, Any],
    splits: dict[str, list[str]] | None = None,
) -> None:
    """dataset.json, written atomically; `splits` replaces the `assign_splits` ones when given."""
    meta = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "splits": assign_splits(ids, holdout_fraction) if splits is None else splits,
        "scene_box": SCENE_BOX,
        **extra,
    }
    atomic_write_json(root / "dataset.json", meta)


def run_jobs(
    fn: Callable[..., Any], jobs: Sequence[tuple], workers: int, description: str, show_progress: bool = True
) -> list[Any]:
    """Run `fn(*job)` for every job, in this process (workers = 1) or a spawn pool, with progress (a rich bar on a
    terminal, periodic lines in a log)."""
    results: list[Any] = [None] * len(jobs)
    with stage_progress(description, total=len(jobs), unit="done", enabled=show_progress and bool(jobs)) as progress:
        if workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                results[i] = fn(*job)
                progress.advance()
        else:
            # spawn, not fork: Embree/TBB thread pools do not survive a fork safely.
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
                for future in cf.as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.advance()
    return results
