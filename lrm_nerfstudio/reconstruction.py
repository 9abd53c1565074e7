"""Reconstruction of source images into files: the stages behind `lrm-reconstruct`, the demo's export,
`lrm-export-mesh` and `lrm-eval`'s meshes (mesh, texture, turntable, triplane, splat, a config.yml that opens it).

The CLIs parse options and report; everything that writes a reconstruction lives here, so no command imports
another command's module.
"""

from __future__ import annotations

import shutil
from copy import deepcopy
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from jaxtyping import Float
from nerfstudio.engine.trainer import TrainerConfig
from PIL import Image
from rich.table import Table
from safetensors.torch import save_file
from torch import Tensor

from lrm_nerfstudio.cameras import canonical_source_camera
from lrm_nerfstudio.data.image_preprocess import preprocess_image
from lrm_nerfstudio.inference import (
    extract_colored_mesh,
    finish_mesh,
    predict_triplane,
    render_nerf_views,
    timed_stage,
)
from lrm_nerfstudio.mesh.cleanup import DEFAULT_MIN_COMPONENT_FRACTION, check_cleanup_options
from lrm_nerfstudio.mesh.marching_cubes import save_mesh
from lrm_nerfstudio.mesh.texture import DEFAULT_TEXTURE_RESOLUTION, check_texture_resolution
from lrm_nerfstudio.mesh.turntable import ffmpeg_available, turntable_cameras, write_turntable
from lrm_nerfstudio.methods import LoadedModel
from lrm_nerfstudio.model.lrm_model import LRMModel
from lrm_nerfstudio.model.processor import ProcessorConfig
from lrm_nerfstudio.splat.convert import SplatConversionConfig, gaussians_from_triplane
from lrm_nerfstudio.splat.gaussians import EmptyReconstructionError
from lrm_nerfstudio.splat.ply import write_gaussians_ply
from lrm_nerfstudio.splat.refine import SplatRefineConfig, distillation_cameras, refine_gaussians
from lrm_nerfstudio.splat.render import gsplat_unavailable_reason, render_frames
from lrm_nerfstudio.training.trainer import LRMTrainerConfig

STAGES = ("preprocess", "encode", "decode", "mesh", "cleanup", "unwrap", "bake", "turntable", "splat", "write")
"""Per-image stages, in order (the model is loaded once, stage "load")."""


# ----------------------------------------------------------------------------------------------------- options
@dataclass
class OutputOptions:
    """What to write for each reconstruction."""

    resolution: int = 256
    """Marching-cubes lattice points per axis (512 works: the density is queried in chunks)."""
    iso_level: float | None = None
    """Density level of the mesh surface; None chooses it from the density field (adaptive)."""
    chunk_size: int = 2**18
    """Points per density query."""
    texture_resolution: int = DEFAULT_TEXTURE_RESOLUTION
    """Side of the colour texture baked for the GLB and OBJ (0: vertex colours only; at most 8192)."""
    target_faces: int | None = None
    """Decimate the mesh to this many faces (None: 50 000 when baking a texture, every face with vertex colours)."""
    min_component_fraction: float = DEFAULT_MIN_COMPONENT_FRACTION
    """Drop mesh components with less than this fraction of the largest component's area (0: keep all)."""
    turntable_frames: int = 24
    """Frames of the turntable (0: no turntable)."""
    turntable_resolution: int = 128
    """Side of the turntable frames in pixels."""
    turntable_elevation: float = 20.0
    """Elevation of the turntable cameras in degrees."""
    turntable_fps: float = 12.0
    """Frames per second of the turntable."""
    video: bool = True
    """Write the turntable as MP4 when imageio-ffmpeg is installed (GIF otherwise)."""
    formats: tuple[Literal["glb", "obj", "ply", "splat"], ...] = ("glb", "obj", "ply")
    """What to write: the mesh as GLB / OBJ / PLY, and `splat`: 3D Gaussians as gaussians.ply (3DGS layout)."""
    splat_count: int = 100_000
    """Number of Gaussians of `splat` (1 M works: the field is queried in chunks)."""
    splat_placement: Literal["surface", "density"] = "surface"
    """Where the Gaussians go: samples of the mesh surface, or of the field's rendering weights."""
    splat_sh_degree: int = 0
    """Spherical-harmonic degree of gaussians.ply (0-3; higher bands start at zero and are refined on CUDA)."""
    splat_refine_steps: int = 0
    """Optimise the Gaussians with gsplat for this many steps against NeRF renders of orbit views (CUDA only)."""
    splat_refine_views: int = 32
    """Orbit views rendered by the NeRF as refinement targets (a quarter as many more are held out)."""


# ----------------------------------------------------------------------------------------------------- stages
@torch.no_grad()
def render_turntable(
    model: LRMModel, triplanes: Float[Tensor, "1 3 C R R"], options: OutputOptions, background: Tensor
) -> list[np.ndarray]:
    """Frames [H, W, 3] in [0, 1] of a ring of cameras around the object (no normals: colour only)."""
    cameras = turntable_cameras(
        options.turntable_frames, resolution=options.turntable_resolution, elevation_deg=options.turntable_elevation
    )
    return render_nerf_views(model, triplanes, cameras, background)


def splat_stage(
    model: LRMModel,
    triplanes: Float[Tensor, "1 3 C R R"],
    mesh,
    options: OutputOptions,
    out_dir: Path,
    background: Float[Tensor, "3"],
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The reconstruction as 3D Gaussians: convert, refine against the NeRF and render a turntable with gsplat where
    it has CUDA, and write `gaussians.ply`.

    Returns:
        The files written and a report (count, placement and, when refined, PSNR against the NeRF before / after).

    Raises:
        EmptyReconstructionError: every Gaussian came out transparent.
    """
    conversion = SplatConversionConfig(
        num_gaussians=options.splat_count,
        placement=options.splat_placement,
        sh_degree=options.splat_sh_degree,
        resolution=options.resolution,
        iso_level=options.iso_level,
        chunk_size=min(options.chunk_size, 2**16),
    )
    gaussians = gaussians_from_triplane(
        model.field, triplanes, conversion, mesh=mesh if options.splat_placement == "surface" else None
    )
    report: dict[str, Any] = {"num_gaussians": len(gaussians), "placement": options.splat_placement,
                              "sh_degree": options.splat_sh_degree}  # fmt: skip
    files: dict[str, Path] = {}
    reason = gsplat_unavailable_reason(model.device)
    if reason is not None:
        if options.splat_refine_steps > 0:
            report["refine"] = {"skipped": reason}
    else:
        if options.splat_refine_steps > 0:
            side = options.turntable_resolution
            train, held = (distillation_cameras(options.splat_refine_views, side, heldout=h) for h in (False, True))
            as_images = lambda cams: torch.from_numpy(np.stack(render_nerf_views(model, triplanes, cams, background)))
            result = refine_gaussians(
                gaussians,
                train,
                as_images(train),
                background,
                SplatRefineConfig(steps=options.splat_refine_steps, num_views=options.splat_refine_views),
                heldout=(held, as_images(held)),
            )
            gaussians = result.gaussians
            report["refine"] = {
                "steps": options.splat_refine_steps,
                "views": options.splat_refine_views,
                "psnr_vs_nerf_before": result.psnr_before,
                "psnr_vs_nerf_after": result.psnr_after,
                "heldout_psnr_vs_nerf_before": result.heldout_psnr_before,
                "heldout_psnr_vs_nerf_after": result.heldout_psnr_after,
                "seconds": result.seconds,
            }
        if options.turntable_frames > 0:
            cameras = turntable_cameras(
                options.turntable_frames,
                resolution=options.turntable_resolution,
                elevation_deg=options.turntable_elevation,
            )
            suffix = ".mp4" if options.video and ffmpeg_available() else ".gif"
            frames = render_frames(gaussians, cameras, background)
            files["turntable_splat"] = write_turntable(
                frames, out_dir / f"turntable_splat{suffix}", fps=options.turntable_fps
            )
    files["splat"] = write_gaussians_ply(out_dir / "gaussians.ply", gaussians)
    return files, report


def background_of(config: TrainerConfig) -> tuple[float, float, float]:
    """The background colour the run evaluates and displays on (datamanager.eval_background)."""
    return (0.0, 0.0, 0.0) if config.pipeline.datamanager.eval_background == "black" else (1.0, 1.0, 1.0)


@dataclass
class ReconstructionTrainerConfig(LRMTrainerConfig):
    """The run's config opened on one reconstruction, whose nerfstudio base dir is the reconstruction's folder.

    nerfstudio's base dir is output_dir/experiment/method/timestamp, and `ns-viewer` creates only its last level
    (for its log), so a config.yml outside a run's folder tree would stop it with FileNotFoundError; its export
    panel also prints `--load-config` as base dir / config.yml.
    """

    base_dir: Path = Path(".")
    """Folder of this config.yml (the viewer's log goes there too)."""

    def get_base_dir(self) -> Path:
        return self.base_dir


def display_config(
    loaded: LoadedModel,
    checkpoint: Path,
    data: Path,
    display_object: str | None,
    out_dir: Path,
    processor: ProcessorConfig | None = None,
) -> TrainerConfig:
    """A copy of the run's config that nerfstudio's eval_setup (ns-viewer, ns-export) opens on one reconstruction,
    written as `out_dir`/config.yml.

    eval_setup loads the checkpoint from `get_checkpoint_dir()` = base dir / `relative_model_dir`; an absolute
    `relative_model_dir` makes that the checkpoint's folder wherever the base dir is.
    """
    run = loaded.config
    inherited = {
        f.name: deepcopy(getattr(run, f.name)) for f in fields(LRMTrainerConfig) if f.init and hasattr(run, f.name)
    }
    config = ReconstructionTrainerConfig(**inherited, base_dir=out_dir.resolve())
    dm = config.pipeline.datamanager
    dm.data = dm.dataparser.data = Path(data).resolve()
    config.data = dm.data
    dm.display_object = display_object
    config.pipeline.model.processor = deepcopy(processor or loaded.model.config.processor)
    config.output_dir = out_dir.resolve()
    config.relative_model_dir = checkpoint.parent.resolve()
    config.load_dir = None
    config.load_step = int(checkpoint.stem.split("-")[-1])
    return config


def _write_source_png(path: Path, image: Tensor) -> None:
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(array).save(path)


@dataclass
class Reconstruction:
    """What `reconstruct_source` wrote, and how long each stage took."""

    name: str
    out_dir: Path
    files: dict[str, Path]
    timings: dict[str, float]
    iso_level: float
    num_vertices: int
    splat: dict[str, Any] | None = None


def reconstruct_source(
    loaded: LoadedModel,
    image: Float[Tensor, "3 H W"],
    camera: Float[Tensor, "16"],
    name: str,
    out_dir: Path,
    options: OutputOptions,
    config: TrainerConfig | None = None,
    timings: dict[str, float] | None = None,
) -> Reconstruction:
    """Predict the triplane of one source image and write mesh, turntable, triplane and (if given) config.yml.

    Raises:
        NoSurfaceError: the density field has no surface to mesh (at `options.iso_level`, if fixed).

    With `splat` asked for and every Gaussian transparent, no gaussians.ply is written and `splat` holds the error.
    """
    timings = {} if timings is None else timings
    model, device = loaded.model, loaded.device
    out_dir.mkdir(parents=True, exist_ok=True)
    triplanes = predict_triplane(model, image, camera, timings)
    with timed_stage(timings, "mesh", device):
        mesh = extract_colored_mesh(model, triplanes, options)
    mesh, textured = finish_mesh(model, triplanes, mesh, options, timings)
    frames: list[np.ndarray] = []
    background = torch.tensor(background_of(loaded.config))
    if options.turntable_frames > 0:
        with timed_stage(timings, "turntable", device):
            frames = render_turntable(model, triplanes, options, background)
    files: dict[str, Path] = {}
    splat_report = None
    if "splat" in options.formats:
        with timed_stage(timings, "splat", device):
            try:
                splat_files, splat_report = splat_stage(model, triplanes, mesh, options, out_dir, background)
                files.update(splat_files)
            except EmptyReconstructionError as err:  # the mesh and the rest are still worth writing
                splat_report = {"error": str(err)}
    with timed_stage(timings, "write", device):
        mesh_formats = tuple(fmt for fmt in dict.fromkeys(options.formats) if fmt != "splat")
        if mesh_formats:
            files |= {
                f"mesh_{fmt}": path
                for fmt, path in save_mesh(mesh, out_dir, "mesh", mesh_formats, textured=textured).items()
            }
        if frames:
            suffix = ".mp4" if options.video and ffmpeg_available() else ".gif"
            files["turntable"] = write_turntable(frames, out_dir / f"turntable{suffix}", fps=options.turntable_fps)
        files["triplane"] = out_dir / "triplane.safetensors"
        save_file(
            {"triplane": triplanes.detach().cpu().contiguous()},
            str(files["triplane"]),
            metadata={"source": name, "step": str(loaded.step), "layout": "B 3 C R R; planes XY, XZ, YZ"},
        )
        files["source"] = out_dir / "source.png"
        _write_source_png(files["source"], image)
        if config is not None:
            files["config"] = out_dir / "config.yml"
            files["config"].write_text(yaml.dump(config), encoding="utf8")
    timings["total"] = sum(timings.get(stage, 0.0) for stage in STAGES)
    return Reconstruction(
        name, out_dir, files, timings, float(mesh.metadata["iso_level"]), len(mesh.vertices), splat_report
    )


def reconstruct_file(
    loaded: LoadedModel,
    path: Path,
    out_dir: Path,
    options: OutputOptions,
    checkpoint: Path,
    foreground_ratio: float | None = None,
    max_pixels: int = 4096 * 4096,
) -> Reconstruction:
    """Preprocess an image file (alpha, or estimated background; recentred) and reconstruct it from the canonical
    camera. The written config.yml re-creates the same source from a copy of the file.

    Raises:
        ImageInputError: unusable image (the message starts with the file name).
        NoSurfaceError: nothing to mesh.
    """
    timings: dict[str, float] = {}
    processor = loaded.model.config.processor
    if foreground_ratio is not None:  # else the model's own (TripoSR 0.85, OpenLRM 0.8)
        processor = replace(processor, foreground_ratio=foreground_ratio)
    with timed_stage(timings, "preprocess", loaded.device):
        pre = preprocess_image(
            path, processor=processor, background_color=background_of(loaded.config), max_pixels=max_pixels
        )
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        copy = out_dir / f"input{path.suffix.lower()}"
        shutil.copyfile(path, copy)
        config = display_config(loaded, checkpoint, copy, None, out_dir, processor=processor)
        return reconstruct_source(
            loaded, pre.image, canonical_source_camera(), path.stem, out_dir, options, config=config, timings=timings
        )
    except BaseException:
        if created:  # leave no half-written result folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------- report
TEXTURE_STAGES = ("cleanup", "unwrap", "bake")
"""Summed into one "texture" column of the printed table (timings.json keeps each)."""


def timings_table(rows: dict[str, dict[str, float]], load_s: float | None, title: str = "lrm-reconstruct") -> Table:
    """A rich table: one row per image, one column per stage (seconds)."""
    table = Table(title=f"{title}: seconds per stage")
    table.add_column("image")
    columns = [stage for stage in STAGES if stage not in TEXTURE_STAGES[1:]]
    for stage in ("load", *columns, "total"):
        table.add_column("texture" if stage == TEXTURE_STAGES[0] else stage, justify="right")
    if load_s is not None:
        table.add_row("(model)", f"{load_s:.2f}", *([""] * (len(columns) + 1)))
    for name, t in rows.items():
        t = {**t, TEXTURE_STAGES[0]: sum(t[s] for s in TEXTURE_STAGES if s in t)} if TEXTURE_STAGES[0] in t else t
        table.add_row(name, "", *(f"{t[s]:.2f}" if s in t else "-" for s in (*columns, "total")))
    return table


def check_output_options(options: OutputOptions) -> str | None:
    """None when the output options can be met, else what is wrong with them (one sentence)."""
    if not options.formats:
        return "--formats: give at least one of glb, obj, ply, splat"
    problem = check_texture_resolution(options.texture_resolution) or check_cleanup_options(
        options.target_faces, options.min_component_fraction
    )
    if problem is not None:
        return problem
    if options.splat_count <= 0:
        return f"--splat-count must be > 0, got {options.splat_count}"
    if not 0 <= options.splat_sh_degree <= 3:
        return f"--splat-sh-degree must be 0..3, got {options.splat_sh_degree}"
    if options.splat_refine_steps < 0 or options.splat_refine_views < 1:
        return "--splat-refine-steps must be >= 0 and --splat-refine-views >= 1"
    if options.splat_refine_steps > 0 and "splat" not in options.formats:
        return "--splat-refine-steps refines Gaussians: add splat to --formats"
    return None
