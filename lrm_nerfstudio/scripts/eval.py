"""`lrm-eval`: score a model's renders and meshes against ground truth, next to two baselines, with a report.

For each object of `--split`, the model predicts one triplane from the object's view 0 exactly as the data has it
(the canonical camera; nothing is recentred), then:

* rendering, on every other view: PSNR, SSIM, LPIPS (when its VGG weights are in the torch cache), PSNR on the union
  of the predicted and true masks, and the IoU of those masks (`lrm_nerfstudio.eval.image_metrics`);
* geometry, when the object has a ground-truth mesh (`mesh_path`, in a folder or a tar shard): the project's marching
  cubes of the predicted density, then Chamfer-L1, F-score at 0.05 / 0.1 / 0.2 and normal consistency from 10k seeded
  surface samples per mesh, under every alignment (`none`, `box`, `search`; `lrm_nerfstudio.eval.geometry`);
* time per stage (encode, decode, mesh, render, geometry) and the mesh's triangle count;
* the same metrics for the background-only image and the silhouette ellipsoid (`lrm_nerfstudio.eval.baselines`).

`--shard I/N` evaluates only shard I's objects (a stable hash of the id, as `lrm-generate --shard`) and writes only
their `<id>/record.json`; the same command without `--shard` then merges: it evaluates nothing, names objects no shard
finished (exit 1), and writes the summary files over all shards. `--data` may also be a folder of OpenLRM renders or
of nerfstudio-data object folders (`lrm_nerfstudio.data.layouts`); `--split all` evaluates every object.

Written into `--output-dir`: metrics.json, metrics.csv, report.md, and per object `<id>/record.json`, `<id>/mesh.ply`,
`<id>/baseline_ellipsoid.ply` and the report's pictures. Bad objects never stop the run: a missing, unreadable or
out-of-box mesh and an empty prediction are per-object notes. Exit status: 0 when every object was evaluated, 1 when
some object could not be read at all, 2 for a bad model, dataset or split.

Examples:
    lrm-eval --load-config outputs/ds/lrm-tiny/RUN/config.yml --data data/ds --output-dir eval/ds
    lrm-eval --weights lrm-tiny.safetensors --data data/gso-eval --output-dir eval/gso --align search
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import trimesh
import tyro
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from lrm_nerfstudio.cameras import look_at, spherical_eye
from lrm_nerfstudio.data.dataset_format import SPLITS, DatasetFormatError, ObjectViews, load_object_mesh
from lrm_nerfstudio.data.layouts import LayoutOptions, copy_layout_options
from lrm_nerfstudio.data.lrm_datamanager import LRMDataManager
from lrm_nerfstudio.eval.baselines import (
    SHADED,
    EllipsoidFit,
    ellipsoid_mesh,
    fit_silhouette_ellipsoid,
    render_mesh,
)
from lrm_nerfstudio.eval.geometry import ALIGNMENTS, Alignment, geometry_by_alignment
from lrm_nerfstudio.eval.image_metrics import mean_metrics, view_metrics
from lrm_nerfstudio.eval.report import (
    BASELINES,
    GEOMETRY_KEYS,
    atomic_write,
    csv_text,
    image_grid,
    label,
    metrics_json,
    rank_worst_first,
    report_markdown,
    summarize,
    write_png,
)
from lrm_nerfstudio.generate.shard_job import (
    ShardMergeError,
    check_merge,
    end_merge,
    read_shard_records,
    write_shard_record,
)
from lrm_nerfstudio.inference import extract_colored_mesh, finish_mesh, predict_triplane, timed_stage
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.sharding import parse_shard
from lrm_nerfstudio.mesh.cleanup import check_cleanup_options
from lrm_nerfstudio.mesh.marching_cubes import NoSurfaceError, save_mesh
from lrm_nerfstudio.mesh.texture import check_texture_resolution
from lrm_nerfstudio.methods import LoadedModel, load_model
from lrm_nerfstudio.model.losses import PerceptualLoss
from lrm_nerfstudio.reconstruction import OutputOptions, background_of

BOX_TOLERANCE = 1e-3
"""A ground-truth mesh reaching further than 1 + this from the origin along an axis lies outside the scene box."""


@dataclass
class EvalConfig(LayoutOptions):
    """Score an LRM's renders and meshes against a dataset's ground truth, with baselines and a report."""

    load_config: Path | None = None
    """config.yml of an ns-train run (its latest checkpoint is used), or a weights file from lrm-export-weights."""
    weights: Path | None = None
    """Weights file written by lrm-export-weights (instead of --load-config)."""
    data: Path = Path("data/lrm")
    """Dataset folder (lrm-generate, lrm-render-meshes or lrm-pack-shards output, OpenLRM renders, or a folder of
    nerfstudio-data object folders)."""
    output_dir: Path = Path("outputs/eval")
    """Folder of metrics.json, metrics.csv, report.md and one sub-folder per object."""
    split: Literal["train", "val", "test", "all"] = "test"
    """Split to evaluate (all: every object of the dataset, whatever its split)."""
    max_objects: int | None = None
    """Evaluate the first this many objects of the split (None: all)."""
    align: Alignment = "none"
    """Alignment of the headline geometry numbers: none (the model's world, the data's frame), box (each mesh centred
    and scaled to a unit bounding box) or search (box, then a rotation search about +Z and ICP). All three are
    always computed and reported."""
    mesh_resolution: int = 128
    """Marching-cubes lattice points per axis of the predicted mesh."""
    iso_level: float | None = None
    """Density level of the predicted mesh; None chooses it from the density field, as lrm-reconstruct does."""
    texture_resolution: int = 0
    """Also write <id>/mesh.glb with a baked texture of this side (0: none; lrm-reconstruct's default is 1024)."""
    target_faces: int | None = None
    """Face budget of that textured mesh (None: 50 000); the metrics always use the full marching-cubes mesh."""
    eval_resolution: int | None = None
    """Width the views are scored at (height keeps the aspect ratio); None: each view's own width."""
    views_per_object: int | None = None
    """Score the first this many views after view 0 (None: all of them)."""
    num_samples: int = 10_000
    """Surface samples per mesh for the geometry metrics."""
    seed: int = 0
    """Seed of the surface samples."""
    report_views: int = 4
    """True / predicted view pairs per object in the report's pictures."""
    pictures: bool = True
    """Write the report's pictures (source, views, meshes) per object."""
    device: str | None = None
    """torch device; default cuda when available, else cpu."""
    shard: str | None = None
    """Evaluate only shard I of N (`I/N`) into the shared --output-dir; the summary files are then written by the
    merge: the same command without --shard."""


class EvalInputError(ValueError):
    """The dataset or split cannot be evaluated (exit status 2)."""


# ----------------------------------------------------------------------------------------------------- data
def open_dataset(loaded: LoadedModel, config: EvalConfig) -> tuple[LRMDataManager, list[str]]:
    """The run's datamanager settings (background), with the model's processor, on `config.data`, and the ids to
    evaluate.

    Raises:
        EvalInputError: no dataset there, or the split is missing or empty.
    """
    if not Path(config.data).is_dir():
        raise EvalInputError(f"{config.data}: not a dataset folder (pass --data DATASET, a folder with dataset.json)")
    dm_config = deepcopy(loaded.config.pipeline.datamanager)
    dm_config.data = dm_config.dataparser.data = Path(config.data)
    copy_layout_options(config, dm_config.dataparser)
    dm_config.dataparser.skip_bad_objects = False  # an unreadable object is a failed row of the report
    dm_config.num_workers = 0
    dm_config.display_object = None
    dm_config.processor = loaded.model.config.processor  # sources prepared as the model's input contract says
    try:
        dm = dm_config.setup(device="cpu", test_mode="test")
    except (DatasetFormatError, ValueError) as err:
        raise EvalInputError(str(err)) from err
    if config.split == "all":
        ids = [oid for split in SPLITS for oid in dm.dataparser.object_ids(split)]
    else:
        ids = dm.dataparser.object_ids(config.split)
    if not ids:
        present = [s for s, v in dm.list_objects().items() if v]
        raise EvalInputError(
            f"{Path(config.data) / 'dataset.json'}: split {config.split!r} does not exist or is empty "
            f"(splits with objects: {', '.join(present) or 'none'}; choose one with --split)"
        )
    return dm, list(ids[: config.max_objects] if config.max_objects is not None else ids)


# ----------------------------------------------------------------------------------------------------- one object
@dataclass
class ViewData:
    """One scored view: its camera as (c2w, fx, fy, cx, cy, w, h) and the true and predicted images."""

    index: int
    c2w: np.ndarray
    intrinsics: np.ndarray
    true_rgb: torch.Tensor
    true_alpha: torch.Tensor
    pred_rgb: torch.Tensor
    ellipsoid_rgb: torch.Tensor | None


def _view_camera(cam) -> tuple[np.ndarray, np.ndarray]:
    c2w = cam.camera_to_worlds[0].cpu().numpy().astype(np.float64)
    intr = np.array([float(cam.fx[0]), float(cam.fy[0]), float(cam.cx[0]), float(cam.cy[0]),
                     int(cam.width[0]), int(cam.height[0])])  # fmt: skip
    return c2w, intr


def _picture_cameras(resolution: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
    """A front (the canonical side, from above) and a back camera for the mesh pictures."""
    f = 0.75 * resolution
    intr = np.array([f, f, resolution / 2, resolution / 2, resolution, resolution])
    return [(look_at(spherical_eye(2.2, az, 20.0)), intr) for az in (-30.0, 150.0)]


def evaluate_object(
    loaded: LoadedModel,
    dm: LRMDataManager,
    object_id: str,
    config: EvalConfig,
    perceptual: PerceptualLoss | None,
) -> dict[str, Any]:
    """Predict one object from its view 0 and score it and the baselines; writes its meshes and pictures.

    Raises:
        DatasetFormatError: the object's views cannot be read.
    """
    model, device = loaded.model, loaded.device
    out_dir = config.output_dir / object_id
    notes: list[str] = []
    timings: dict[str, float] = {}
    bg = np.asarray(background_of(loaded.config), dtype=np.float32)
    obj: ObjectViews = dm.dataparser.load_object(object_id)
    image, camera = dm.objects.source(obj, 0, bg)
    source_rgba = dm.objects.load_view(obj, 0)

    triplanes = predict_triplane(model, image, camera, timings)
    pred_mesh: trimesh.Trimesh | None = None
    with timed_stage(timings, "mesh", device):
        try:
            pred_mesh = extract_colored_mesh(
                model, triplanes, OutputOptions(resolution=config.mesh_resolution, iso_level=config.iso_level)
            )
        except NoSurfaceError as err:
            notes.append(f"empty predicted mesh: {err}")
    fit: EllipsoidFit | None = None
    try:
        fit = fit_silhouette_ellipsoid(source_rgba, obj.c2w[0], obj.intrinsics[0, :4])
    except ValueError as err:
        notes.append(f"no ellipsoid baseline: {err}")
    ellipsoid = ellipsoid_mesh(fit) if fit is not None else None

    # ---- rendering
    views: list[ViewData] = []
    rows: dict[str, list[dict[str, float | None]]] = {"model": [], "ellipsoid": [], "background": []}
    indices = list(range(1, len(obj))) or [0]
    if config.views_per_object is not None:
        indices = indices[: config.views_per_object]
    bg_t = torch.from_numpy(bg)
    with timed_stage(timings, "render", device):
        for v in indices:
            width = config.eval_resolution or int(obj.intrinsics[v, 4])
            cam, true_rgb, true_alpha = dm.full_view(obj, v, resolution=width, bg=bg)
            outputs = model.render_camera(cam.to(device), triplanes, compute_normals=False)
            acc = outputs["accumulation"].cpu()
            pred_rgb = (outputs["rgb_premultiplied"].cpu() + (1.0 - acc) * bg_t).clamp(0, 1)
            rows["model"].append(view_metrics(pred_rgb, true_rgb, acc, true_alpha, perceptual))
            empty = torch.zeros_like(true_alpha)
            rows["background"].append(
                view_metrics(bg_t.expand_as(true_rgb).clone(), true_rgb, empty, true_alpha, perceptual)
            )
            c2w, intr = _view_camera(cam)
            ell_rgb = None
            if ellipsoid is not None:
                rgb, mask = render_mesh(ellipsoid, c2w, intr, bg)
                ell_rgb = torch.from_numpy(rgb)
                rows["ellipsoid"].append(
                    view_metrics(ell_rgb, true_rgb, torch.from_numpy(mask)[..., None], true_alpha, perceptual)
                )
            views.append(ViewData(v, c2w, intr, true_rgb, true_alpha, pred_rgb, ell_rgb))

    record: dict[str, Any] = {"id": object_id, **mean_metrics(rows["model"])}
    baselines: dict[str, dict[str, Any]] = {"ellipsoid": mean_metrics(rows["ellipsoid"]) if fit is not None else {},
                                            "background": mean_metrics(rows["background"])}  # fmt: skip
    if fit is not None:
        baselines["ellipsoid"]["semi_axes_xyz"] = [float(a) for a in fit.world_semi_axes()]
        baselines["ellipsoid"]["center"] = [float(c) for c in fit.center]

    # ---- geometry
    gt_mesh: trimesh.Trimesh | None = None
    geometry: dict[str, dict[str, dict[str, float | None]]] = {}
    start = time.perf_counter()
    if obj.mesh_path is None:
        notes.append("no ground-truth mesh (transforms.json has no mesh_path): geometry skipped")
    else:
        try:
            gt_mesh = load_object_mesh(obj)
        except DatasetFormatError as err:
            notes.append(f"ground-truth mesh unusable, geometry skipped: {err}")
    if gt_mesh is not None:
        reach = float(np.abs(gt_mesh.vertices).max())
        if reach > 1.0 + BOX_TOLERANCE:
            notes.append(
                f"ground-truth mesh {obj.mesh_path} reaches {reach:.3g} from the origin, outside the [-1, 1]³ box the "
                "model predicts in: alignment 'none' penalises the part outside; box and search do not"
            )
        geometry["model"] = geometry_by_alignment(pred_mesh, gt_mesh, config.num_samples, config.seed)
        if ellipsoid is not None:
            geometry["ellipsoid"] = geometry_by_alignment(ellipsoid, gt_mesh, config.num_samples, config.seed)
    timings["geometry"] = time.perf_counter() - start
    # every object has every key: None where there is no ground-truth mesh
    record |= {k: geometry["model"][config.align][k] if "model" in geometry else None for k in GEOMETRY_KEYS}
    record["geometry"] = geometry.get("model")
    baselines["ellipsoid"] |= {k: geometry["ellipsoid"][config.align][k] if "ellipsoid" in geometry else None
                               for k in GEOMETRY_KEYS}  # fmt: skip
    baselines["ellipsoid"]["geometry"] = geometry.get("ellipsoid")
    record["empty_mesh"] = pred_mesh is None
    record["num_triangles"] = 0 if pred_mesh is None else len(pred_mesh.faces)
    if pred_mesh is not None:
        record["iso_level"] = float(pred_mesh.metadata.get("iso_level", float("nan")))
    record |= {f"{k}_s": timings.get(k, 0.0) for k in ("encode", "decode", "mesh", "render", "geometry")}
    record["views"] = [v.index for v in views]
    record["baselines"] = baselines

    # ---- files
    files: dict[str, str] = {}
    if pred_mesh is not None:
        atomic_write(out_dir / "mesh.ply", pred_mesh.export(file_type="ply"))
        files["mesh"] = f"{object_id}/mesh.ply"
        if config.texture_resolution > 0:
            options = OutputOptions(texture_resolution=config.texture_resolution, target_faces=config.target_faces)
            cleaned, textured = finish_mesh(model, triplanes, pred_mesh, options, timings)
            save_mesh(cleaned, out_dir, "mesh", ("glb",), textured=textured)
            files["mesh_glb"] = f"{object_id}/mesh.glb"
    if ellipsoid is not None:
        atomic_write(out_dir / "baseline_ellipsoid.ply", ellipsoid.export(file_type="ply"))
        files["baseline_ellipsoid"] = f"{object_id}/baseline_ellipsoid.ply"
    record["files"] = files
    if config.pictures:
        record["pictures"] = write_pictures(
            out_dir, object_id, image, views, (gt_mesh, pred_mesh, ellipsoid), bg, config
        )
    record["notes"] = notes
    return record


def write_pictures(
    out_dir: Path,
    object_id: str,
    source: torch.Tensor,
    views: list[ViewData],
    meshes: tuple[trimesh.Trimesh | None, trimesh.Trimesh | None, trimesh.Trimesh | None],
    bg: np.ndarray,
    config: EvalConfig,
) -> dict[str, str]:
    """source.png, views.png (true / model / ellipsoid rows) and meshes.png (truth / prediction / ellipsoid)."""
    pictures: dict[str, str] = {}
    write_png(out_dir / "source.png", source.permute(1, 2, 0).cpu().numpy())
    pictures["source"] = f"{object_id}/source.png"
    n = max(1, min(config.report_views, len(views)))
    chosen = [views[round(i * (len(views) - 1) / max(1, n - 1))] for i in range(n)] if views else []
    if chosen:
        grid = [[v.true_rgb.numpy() for v in chosen], [v.pred_rgb.numpy() for v in chosen]]
        if all(v.ellipsoid_rgb is not None for v in chosen):
            grid.append([v.ellipsoid_rgb.numpy() for v in chosen])  # type: ignore[union-attr]
        write_png(out_dir / "views.png", image_grid(grid, size=max(128, grid[0][0].shape[0])))
        pictures["views"] = f"{object_id}/views.png"
    blank = np.ones((128, 128, 3), np.float32) * bg
    rows = []  # one per camera: truth, prediction, ellipsoid side by side
    for cam, intr in _picture_cameras():
        rows.append([render_mesh(m, cam, intr, bg, SHADED)[0] if m is not None else blank for m in meshes])
    write_png(out_dir / "meshes.png", image_grid(rows))
    pictures["meshes"] = f"{object_id}/meshes.png"
    return pictures


# ----------------------------------------------------------------------------------------------------- records
RECORD_NAME = "record.json"
"""Per-object result inside `<output-dir>/<id>/`: what a merge reads instead of evaluating again."""


def eval_stamp(loaded: LoadedModel, config: EvalConfig) -> str:
    """Hash of what changes an object's result (the model, its step, the data and the scoring settings)."""
    settings = {k: v for k, v in vars(config).items() if k not in ("output_dir", "device", "shard", "max_objects",
                                                                    "split")}  # fmt: skip
    settings |= {"model": str(loaded.source), "step": loaded.step}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_record(out: Path, object_id: str, stamp: str, result: dict[str, Any]) -> None:
    """`<id>/record.json`: {"stamp", and "record" (the object's metrics) or "failed" (why it was not read)}."""
    text = json.dumps({"stamp": stamp, **result}, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
    atomic_write(out / object_id / RECORD_NAME, text)


def read_record(out: Path, object_id: str, stamp: str) -> dict[str, Any] | None:
    """The object's record if it exists and was made with `stamp`; else None."""
    try:
        data = json.loads((out / object_id / RECORD_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("stamp") == stamp else None


# ----------------------------------------------------------------------------------------------------- run
def _progress() -> Progress:
    columns = [TextColumn("[bold]lrm-eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]  # fmt: skip
    return Progress(*columns, console=CONSOLE, transient=False)


def _line(o: dict[str, Any]) -> str:
    parts = [f"{label(k, arrow=False)} {o[k]:.3f}" for k in ("psnr", "ssim", "mask_iou", "chamfer_l1", "fscore@0.1")
             if o.get(k) is not None]  # fmt: skip
    return ", ".join(parts) + (f" ({len(o['notes'])} note(s))" if o.get("notes") else "")


def summary_table(summary: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> Table:
    """Model against baselines on the headline metrics (a rich table for the console)."""
    keys = [k for k in ("psnr", "ssim", "lpips", "masked_psnr", "mask_iou", *GEOMETRY_KEYS) if summary.get(k) is not None
            or any(b.get(k) is not None for b in baselines.values())]  # fmt: skip
    table = Table(title="lrm-eval: means over objects")
    table.add_column("")
    for key in keys:
        table.add_column(label(key), justify="right")
    for name, values in (("model", summary), *((f"{b} baseline", baselines[b]) for b in BASELINES)):
        table.add_row(name, *("–" if values.get(k) is None else f"{values[k]:.3f}" for k in keys))
    return table


def alignment_summary(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Alignment -> {"model": means, "ellipsoid": means} of the geometry metrics over the objects with geometry."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for mode in ALIGNMENTS:
        model = [o["geometry"][mode] for o in objects if o.get("geometry")]
        ellipsoid = [g[mode] for o in objects if (g := o["baselines"]["ellipsoid"].get("geometry"))]
        who = {name: mean_metrics(rows) for name, rows in (("model", model), ("ellipsoid", ellipsoid)) if rows}
        if who:
            out[mode] = who
    return out


def main(config: EvalConfig) -> int:
    """Run `lrm-eval`; returns the exit status (module docstring)."""
    limits = {"mesh_resolution": 2, "num_samples": 1, "report_views": 1, "max_objects": 1, "views_per_object": 1,
              "eval_resolution": 4}  # fmt: skip
    for name, least in limits.items():
        value = getattr(config, name)
        if value is not None and value < least:
            CONSOLE.print(f"[bold red]lrm-eval: --{name.replace('_', '-')} must be at least {least}, got {value}")
            return 2
    problem = check_texture_resolution(config.texture_resolution) or check_cleanup_options(config.target_faces, 0.0)
    if problem is not None:
        CONSOLE.print(f"[bold red]lrm-eval: {problem}", soft_wrap=True, highlight=False)
        return 2
    try:
        loaded = load_model(config.load_config, config.weights, config.device)
        dm, ids = open_dataset(loaded, config)
    except (ModelLoadError, EvalInputError) as err:
        CONSOLE.print(f"[bold red]lrm-eval: {err}", soft_wrap=True, highlight=False)
        return 2
    out = config.output_dir
    try:
        shard = parse_shard(config.shard)
        out.mkdir(parents=True, exist_ok=True)
        merging = shard is None and bool(read_shard_records(out))
    except (ValueError, OSError) as err:
        CONSOLE.print(f"[bold red]lrm-eval: {err}", soft_wrap=True, highlight=False)
        return 2
    stamp = eval_stamp(loaded, config)
    todo = list(ids)
    if shard is not None:  # a shard resumes: objects it already finished with these settings are kept
        write_shard_record(out, shard, stamp, finished=False)
        todo = [oid for oid in shard.select(ids) if read_record(out, oid, stamp) is None]
    elif merging:
        try:
            check_merge(out, ids, lambda oid: read_record(out, oid, stamp) is not None, stamp)
        except ValueError as err:  # ShardMergeError: missing objects named, exit 1; other settings: exit 2
            CONSOLE.print(f"[bold red]lrm-eval: {err}", soft_wrap=True, highlight=False)
            return 1 if isinstance(err, ShardMergeError) else 2
        todo = []
    perceptual = PerceptualLoss(loaded.config.pipeline.model.perceptual_net).to(loaded.device)
    what = f"shard {shard} of " if shard is not None else "the merged shards of " if merging else ""
    CONSOLE.print(f"lrm-eval: {loaded.config.method_name} step {loaded.step} on {what}{len(todo)} {config.split} "
                  f"objects of {config.data} ({loaded.device})", highlight=False)  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    with _progress() as progress:
        task = progress.add_task("objects", total=len(todo))
        for i, object_id in enumerate(todo, start=1):
            try:
                record = evaluate_object(loaded, dm, object_id, config, perceptual)
            except DatasetFormatError as err:
                results[object_id] = {"failed": str(err)}
                progress.console.print(f"[{i}/{len(todo)}] {object_id}: [red]not evaluated: {err}", highlight=False)
            else:
                results[object_id] = {"record": record}
                progress.console.print(f"[{i}/{len(todo)}] {object_id}: {_line(record)}", highlight=False)
                for note in record["notes"]:
                    progress.console.print(f"    note: {note}", highlight=False, soft_wrap=True)
            write_record(out, object_id, stamp, results[object_id])
            progress.update(task, completed=i)
    if shard is not None:
        write_shard_record(out, shard, stamp, finished=True)
        n_failed = sum(1 for oid in shard.select(ids) if "failed" in (read_record(out, oid, stamp) or {}))
        CONSOLE.print(f"lrm-eval: shard {shard} done ({len(todo)} evaluated now, {n_failed} unreadable); merge with "
                      "the same command without --shard", highlight=False, soft_wrap=True)  # fmt: skip
        return 1 if n_failed else 0
    objects: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for object_id in ids:
        result = results.get(object_id) or read_record(out, object_id, stamp) or {}
        if "record" in result:
            objects.append(result["record"])
        else:
            failed[object_id] = result.get("failed", "not evaluated")

    summary = summarize(objects)
    summary["num_failed"] = len(failed)
    baselines = {b: summarize([{"id": o["id"], **o["baselines"].get(b, {})} for o in objects]) for b in BASELINES}
    for b in baselines.values():
        b.pop("num_empty_meshes", None)
        for key in ("num_triangles", "encode_s", "decode_s", "mesh_s", "render_s", "geometry_s"):
            b.pop(key, None)
    by_alignment = alignment_summary(objects)
    summary["by_alignment"] = by_alignment
    settings = {
        "model": str(loaded.source),
        "method": loaded.config.method_name,
        "step": loaded.step,
        "data": str(config.data),
        "split": config.split,
        "max_objects": config.max_objects,
        "align": config.align,
        "alignments": list(ALIGNMENTS),
        "mesh_resolution": config.mesh_resolution,
        "iso_level": config.iso_level,
        "eval_resolution": config.eval_resolution,
        "views_per_object": config.views_per_object,
        "num_samples": config.num_samples,
        "seed": config.seed,
        "fscore_thresholds": [0.05, 0.1, 0.2],
        "distance": "point-to-surface (open3d), mean of the two directed means",
        "lpips": "on (VGG)" if perceptual.available else f"off: {perceptual.unavailable_reason}",
        "background": list(background_of(loaded.config)),
        "device": str(loaded.device),
        "failed": failed,
    }
    atomic_write(out / "metrics.json", metrics_json(summary, objects, baselines, settings))
    atomic_write(out / "metrics.csv", csv_text(rank_worst_first(objects)))
    atomic_write(out / "report.md", report_markdown(summary, objects, baselines, settings, by_alignment))
    CONSOLE.print(summary_table(summary, baselines))
    CONSOLE.print(f"lrm-eval: wrote {out / 'metrics.json'}, {out / 'metrics.csv'} and {out / 'report.md'}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    if merging:
        end_merge(out)
    if failed:
        CONSOLE.print(f"[bold red]lrm-eval: {len(failed)} of {len(ids)} objects could not be read: "
                      + ", ".join(failed), highlight=False, soft_wrap=True)  # fmt: skip
        return 1
    return 0


def entrypoint() -> None:
    """`lrm-eval` console script."""
    sys.exit(main(tyro.cli(EvalConfig)))


if __name__ == "__main__":
    entrypoint()
