"""`lrm-render-meshes`: a folder of the user's meshes (OBJ, GLB/GLTF, PLY, STL) -> the same multi-view dataset.

Each mesh is normalised into the [-1, 1]^3 box, then rendered with its image texture (through UVs), its vertex or
face colours, or a default material. A mesh that cannot be used (unreadable, empty, degenerate, non-finite) is
reported by name and skipped; the run goes on.

`--shard I/N` renders only shard I's meshes; the same command without it then merges the shards (renders nothing,
writes dataset.json, names missing objects; `lrm_nerfstudio.generate.shard_job`).

Examples:
    lrm-render-meshes --input my_meshes --output data/my_meshes --num-views 32 --resolution 256
    lrm-render-meshes --input gso --output data/gso-eval --num-views 17 --orbit --all-in-split test   # for lrm-eval
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from lrm_nerfstudio.generate.dataset_writer import (
    CONSOLE,
    check_output_dir,
    clean_stale_temporaries,
    finished_stamp,
    run_jobs,
    write_dataset_json,
    write_object_folder,
)
from lrm_nerfstudio.generate.renderer import (
    Albedo,
    CameraSamplerConfig,
    CompositeAlbedo,
    ConstantAlbedo,
    FaceColorAlbedo,
    LightingConfig,
    MeshRenderer,
    UVTextureAlbedo,
    VertexColorAlbedo,
    orbit_views,
    random_lighting,
    sample_views,
)
from lrm_nerfstudio.generate.shapes import normalize_vertices
from lrm_nerfstudio.generate.shard_job import (
    ShardMergeError,
    check_merge,
    clean_own_temporaries,
    end_merge,
    read_shard_records,
    write_shard_record,
)
from lrm_nerfstudio.io.sharding import parse_shard

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl")


@dataclass
class RenderMeshesConfig:
    """Render a folder of meshes into the lrm-multiview dataset format (docs/DATA.md)."""

    input: Path = Path("meshes")
    """Folder of meshes (searched recursively for .obj, .glb, .gltf, .ply, .stl)."""
    output: Path = Path("data/meshes")
    """Dataset folder to write (finished objects already there are kept)."""
    num_views: int = 32
    """Views per mesh; view 0 is the canonical inference camera."""
    resolution: int = 256
    """Image width and height in pixels."""
    seed: int = 0
    """Base seed; mesh i (in sorted path order) uses the stream seeded by (seed, i)."""
    workers: int = 2
    """Worker processes (1 = render in this process)."""
    default_color: tuple[float, float, float] = (0.7, 0.7, 0.7)
    """RGB in [0, 1] for meshes without texture or colours."""
    png_compress_level: int = 1
    """PNG compression level 0-9."""
    holdout_fraction: float = 0.05
    """Fraction of objects for each of val and test (at least 1 each once there are 3 or more objects)."""
    normalize_extent: float = 0.9
    """Largest coordinate magnitude after centring (inside the [-1, 1]^3 box)."""
    normalize_radius: float = 1.0
    """Bounding sphere radius cap after normalisation (keeps the mesh in frame)."""
    progress: bool = True
    """Show a progress bar and the summary."""
    cameras: CameraSamplerConfig = field(default_factory=CameraSamplerConfig)
    """Camera distance, focal and elevation ranges."""
    lighting: LightingConfig = field(default_factory=LightingConfig)
    """Randomised lighting."""
    orbit: bool = False
    """Evaluation cameras instead of random ones: view 0 canonical, views 1.. evenly spaced in azimuth (no jitter)
    on one orbit at orbit_elevation, at the canonical distance and focal (`--num-views 17`: 16 orbit views + view 0)."""
    orbit_elevation: float = 20.0
    """Elevation of the orbit views in degrees (with --orbit)."""
    all_in_split: Literal["train", "val", "test"] | None = None
    """Put every object into this split (an evaluation set: test); None: train / val / test by holdout_fraction."""
    shard: str | None = None
    """Render only shard I of N (`I/N`, e.g. `$SLURM_ARRAY_TASK_ID/64`) into the shared --output; dataset.json is then
    written by the merge: the same command without --shard."""


class BadMeshError(ValueError):
    """A mesh that cannot be rendered; the message names the file and the problem."""


def _unit_color(values: Any, channels: int = 3) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)[..., :channels]
    return arr / 255.0 if arr.size and arr.max() > 1.0 else arr


def _material_albedo(mesh, default: np.ndarray) -> Albedo:
    """Albedo of one trimesh sub-mesh from its visual: UV texture, vertex colours, face colours, or a constant."""
    visual = mesh.visual
    faces = np.asarray(mesh.faces, dtype=np.int64)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        material = getattr(visual, "material", None)
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        factor = getattr(material, "baseColorFactor", None)
        if factor is None:
            factor = getattr(material, "diffuse", None)
        factor = np.ones(3) if factor is None else _unit_color(factor)
        uv = getattr(visual, "uv", None)
        if image is not None and uv is not None and len(uv) == len(mesh.vertices):
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
            return UVTextureAlbedo(faces, np.asarray(uv, dtype=np.float64), pixels, factor)
        return ConstantAlbedo(factor if material is not None else default)
    if kind == "vertex":
        return VertexColorAlbedo(faces, _unit_color(visual.vertex_colors))
    if kind == "face":
        return FaceColorAlbedo(_unit_color(visual.face_colors))
    return ConstantAlbedo(default)


def check_inside(path: Path, root: Path) -> None:
    """Refuse a mesh whose real file (symlinks followed) lies outside the input folder `root`.

    Its textures and buffers need no check here: trimesh's file resolver only reads inside the mesh's own folder,
    symlinks resolved.
    """
    real, base = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise BadMeshError(f"{path}: resolves to {real}, outside the input folder {base}; copy the mesh into it")


def load_mesh(path: Path, default_color: tuple[float, float, float]):
    """Load a mesh file into (vertices, faces, albedo, vertex colours or None); raise BadMeshError if unusable."""
    import trimesh

    try:
        loaded = trimesh.load(path, process=False)
    except Exception as err:  # trimesh raises many types for bad files
        raise BadMeshError(f"{path}: unreadable ({type(err).__name__}: {err})") from err
    if isinstance(loaded, trimesh.Scene):
        meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        meshes = [loaded]
    else:
        raise BadMeshError(f"{path}: no triangle mesh inside (got {type(loaded).__name__})")
    meshes = [m for m in meshes if len(m.faces) > 0]
    if not meshes:
        raise BadMeshError(f"{path}: empty (no faces)")
    default = np.asarray(default_color, dtype=np.float64)
    verts, faces, starts, albedos, offset, face_offset = [], [], [], [], 0, 0
    colors: list[np.ndarray] | None = []
    for m in meshes:
        v = np.asarray(m.vertices, dtype=np.float64)
        f = np.asarray(m.faces, dtype=np.int64)
        if not np.isfinite(v).all():
            raise BadMeshError(f"{path}: non-finite vertex coordinates")
        if f.min() < 0 or f.max() >= len(v):
            raise BadMeshError(f"{path}: face indices out of range")
        verts.append(v)
        faces.append(f + offset)
        starts.append(face_offset)
        albedos.append(_material_albedo(m, default))
        if colors is not None and getattr(m.visual, "kind", None) == "vertex":
            colors.append(_unit_color(m.visual.vertex_colors))
        else:
            colors = None
        offset += len(v)
        face_offset += len(f)
    vertices, all_faces = np.concatenate(verts), np.concatenate(faces)
    tri = vertices[all_faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    extent = vertices[np.unique(all_faces)].ptp(axis=0) if len(vertices) else np.zeros(3)
    if not area > 1e-12 or np.sort(extent)[-2] <= 1e-9 * max(extent.max(), 1e-30):
        raise BadMeshError(f"{path}: degenerate (zero area or flat to a line/point)")
    albedo = albedos[0] if len(albedos) == 1 else CompositeAlbedo(np.asarray(starts), albedos)
    return vertices, all_faces, albedo, (np.concatenate(colors) if colors else None)


def mesh_ids(paths: list[Path]) -> list[str]:
    """Folder names from file names (unsafe characters replaced; duplicates get the suffix, then a counter)."""
    ids, seen = [], set()
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", p.stem) or "mesh"
        oid = base if base not in seen else f"{base}_{p.suffix.lstrip('.').lower()}"
        k = 1
        while oid in seen:
            oid, k = f"{base}_{k}", k + 1
        seen.add(oid)
        ids.append(oid)
    return ids


def recorded_config(config: RenderMeshesConfig) -> dict[str, Any]:
    """Settings that change the bytes written (not input/output paths, workers or progress)."""
    record = dataclasses.asdict(config)
    for key in ("input", "output", "workers", "progress", "all_in_split", "shard"):  # these change no object
        record.pop(key)
    if not config.orbit:  # so that datasets rendered before the option existed keep their stamp
        record.pop("orbit")
        record.pop("orbit_elevation")
    return json.loads(json.dumps(record))


def orbit_record(config: RenderMeshesConfig) -> dict[str, Any]:
    """dataset.json's `camera` entry for `--orbit` views."""
    from lrm_nerfstudio.cameras import CANONICAL_DISTANCE, CANONICAL_FOCAL

    return {
        "distance_range": [CANONICAL_DISTANCE, CANONICAL_DISTANCE],
        "focal_range": [CANONICAL_FOCAL, CANONICAL_FOCAL],
        "elevation_range": sorted([0.0, config.orbit_elevation]),
        "look_at": [0.0, 0.0, 0.0],
        "canonical_view": 0,
        "orbit": {"views": config.num_views - 1, "elevation": config.orbit_elevation},
    }


def render_one(config: RenderMeshesConfig, index: int, path: Path, oid: str, stamp: str) -> tuple[str, str | None]:
    """Render one mesh into its folder; return (id, None) or (id, the problem) for a bad mesh."""
    try:
        check_inside(path, Path(config.input))
        vertices, faces, albedo, colors = load_mesh(path, config.default_color)
        vertices = normalize_vertices(vertices, config.normalize_extent, config.normalize_radius)
        renderer = MeshRenderer(vertices, faces, albedo)
    except ValueError as err:  # BadMeshError, or a degenerate mesh found by normalisation / the renderer
        return oid, str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
    rng = np.random.default_rng([config.seed, index])
    lighting = random_lighting(rng, config.lighting)
    if config.orbit:
        views = orbit_views(config.num_views, config.orbit_elevation)
    else:
        views = sample_views(rng, config.num_views, config.cameras)
    extra = {"generator": {"name": "lrm-render-meshes", "stamp": stamp, "source": path.name, "index": index}}
    write_object_folder(
        Path(config.output), oid, renderer, views, lighting, config.resolution, colors, extra, config.png_compress_level
    )
    return oid, None


def main(config: RenderMeshesConfig) -> dict[str, Any]:
    """Render every mesh under config.input; return a summary (rendered, skipped, bad meshes with reasons)."""
    src = Path(config.input)
    if not src.is_dir():
        raise BadMeshError(f"{src}: input is not a directory of meshes")
    for name in ("num_views", "workers"):
        if getattr(config, name) < 1:
            raise ValueError(f"RenderMeshesConfig.{name} must be >= 1, got {getattr(config, name)}")
    if config.resolution < 4:
        raise ValueError(f"RenderMeshesConfig.resolution must be >= 4, got {config.resolution}")
    paths = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
    if not paths:
        raise BadMeshError(f"{src}: no mesh files ({', '.join(MESH_SUFFIXES)}) found")
    root = Path(config.output)
    check_output_dir(root)
    shard = parse_shard(config.shard)
    stamp = hashlib.sha256(json.dumps(recorded_config(config), sort_keys=True).encode()).hexdigest()[:16]
    ids = mesh_ids(paths)
    merging = shard is None and bool(read_shard_records(root))
    if shard is None and not merging:
        clean_stale_temporaries(root)
    elif shard is not None:
        clean_own_temporaries(root, shard.owns)
        write_shard_record(root, shard, stamp, finished=False)
    jobs, done, shard_bad = [], [], {}
    if merging:
        done, shard_bad = check_merge(root, ids, lambda oid: finished_stamp(root, oid) == stamp, stamp)
    for index, (path, oid) in enumerate(zip(paths, ids)):
        if merging or (shard is not None and not shard.owns(oid)):
            continue
        found = finished_stamp(root, oid)
        if found is None:
            jobs.append((config, index, path, oid, stamp))
        elif found != stamp:
            raise ValueError(f"{root / oid}: made with different settings; use a new --output or the original ones")
        else:
            done.append(oid)
    results = run_jobs(render_one, jobs, config.workers, "meshes", show_progress=config.progress)
    bad = shard_bad | {oid: reason for oid, reason in results if reason is not None}
    rendered = [oid for oid, reason in results if reason is None]
    good = [oid for oid in ids if oid in set(rendered) | set(done)]
    if shard is not None:
        write_shard_record(root, shard, stamp, finished=True, bad=bad)
    elif good:
        write_dataset_json(
            root,
            good,
            config.holdout_fraction,
            {
                "camera": orbit_record(config) if config.orbit else config.cameras.dataset_record(),
                "generator": {"name": "lrm-render-meshes", "stamp": stamp, "config": recorded_config(config)},
            },
            splits=None if config.all_in_split is None else {config.all_in_split: good},
        )
    if merging:
        end_merge(root)
    summary = {
        "output": str(root),
        "shard": None if shard is None else str(shard),
        "merged": merging,
        "meshes": len(paths) if shard is None else len(shard.select(ids)),
        "rendered": len(rendered),
        "skipped_finished": len(done),
        "bad": len(bad),
        "bad_meshes": [reason for reason in bad.values()],
    }
    if config.progress:
        for reason in bad.values():
            CONSOLE.print(f"[yellow]skipped bad mesh: {reason}")
        CONSOLE.print(
            f"[green]{root}: {len(rendered)} rendered, {len(done)} already finished, {len(bad)} bad meshes skipped"
        )
    return summary


def entrypoint() -> None:
    """CLI entry point (`lrm-render-meshes`)."""
    try:
        main(tyro.cli(RenderMeshesConfig))
    except ShardMergeError as err:
        CONSOLE.print(f"[bold red]lrm-render-meshes: {err}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
