"""`lrm-generate`: the built-in procedural multi-view dataset (Zeroverse-style, LRM-Zero, Xie et al. 2024).

Each object i is drawn from its own random stream seeded by (seed, i), so the output is byte-identical for one seed
whatever the worker count, and a killed run resumes where it stopped (finished object folders are skipped).

A job can be split over machines: `--shard I/N` makes only shard I's objects; the same command without `--shard`
then merges (renders nothing, writes dataset.json, names missing objects; `lrm_nerfstudio.generate.shard_job`).

Example:
    lrm-generate --output data/procedural --num-objects 128 --num-views 32 --resolution 128 --workers 2
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from lrm_nerfstudio.generate.dataset_writer import (
    CONSOLE,
    check_output_dir,
    clean_stale_temporaries,
    finished_stamp,
    run_jobs,
    vertex_normals,
    vertex_parts,
    write_dataset_json,
    write_object_folder,
)
from lrm_nerfstudio.generate.renderer import (
    CameraSamplerConfig,
    LightingConfig,
    MeshRenderer,
    ProceduralAlbedo,
    random_lighting,
    sample_views,
)
from lrm_nerfstudio.generate.shapes import ShapeConfig, make_object
from lrm_nerfstudio.generate.shard_job import (
    ShardMergeError,
    check_merge,
    clean_own_temporaries,
    end_merge,
    read_shard_records,
    write_shard_record,
)
from lrm_nerfstudio.generate.textures import TextureConfig, random_texture, triplanar
from lrm_nerfstudio.io.sharding import parse_shard


@dataclass
class GenerateConfig:
    """Make a procedural multi-view dataset (the format of docs/DATA.md)."""

    output: Path = Path("data/procedural")
    """Dataset folder to write (created if missing; finished objects already there are kept)."""
    num_objects: int = 128
    """Number of objects."""
    num_views: int = 32
    """Views per object; view 0 is the canonical inference camera."""
    resolution: int = 128
    """Image width and height in pixels."""
    seed: int = 0
    """Base seed; object i uses the stream seeded by (seed, i)."""
    workers: int = 2
    """Worker processes (1 = render in this process; the output does not depend on this)."""
    png_compress_level: int = 1
    """PNG compression level 0-9 (1 is much faster than the default 6 for a few % more disk)."""
    holdout_fraction: float = 0.05
    """Fraction of objects for each of val and test (at least 1 each once there are 3 or more objects)."""
    progress: bool = True
    """Show a progress bar."""
    shard: str | None = None
    """Make only shard I of N (`I/N`, e.g. `$SLURM_ARRAY_TASK_ID/64`) into the shared --output; dataset.json is then
    written by the merge: the same command without --shard."""
    shapes: ShapeConfig = field(default_factory=ShapeConfig)
    """Primitives and augmentations."""
    textures: TextureConfig = field(default_factory=TextureConfig)
    """Procedural textures."""
    cameras: CameraSamplerConfig = field(default_factory=CameraSamplerConfig)
    """Camera distance, focal and elevation ranges."""
    lighting: LightingConfig = field(default_factory=LightingConfig)
    """Randomised lighting."""


def object_id(index: int) -> str:
    """Folder name of object `index`."""
    return f"{index:06d}"


def recorded_config(config: GenerateConfig) -> dict[str, Any]:
    """The config as recorded in the dataset: everything that changes the bytes written (not output, workers)."""
    record = dataclasses.asdict(config)
    for key in ("output", "workers", "progress", "num_objects", "shard"):
        record.pop(key)
    return json.loads(json.dumps(record))  # tuples -> lists, as read back


def config_stamp(config: GenerateConfig) -> str:
    """Short hash of the recorded config: finished objects are only reused when it matches."""
    return hashlib.sha256(json.dumps(recorded_config(config), sort_keys=True).encode()).hexdigest()[:16]


def generate_object(config: GenerateConfig, index: int, stamp: str) -> str:
    """Draw, render and write object `index`. Runs in a worker process."""
    rng = np.random.default_rng([config.seed, index])
    obj = make_object(rng, config.shapes)
    textures = [random_texture(rng, config.textures) for _ in range(obj.num_parts)]
    lighting = random_lighting(rng, config.lighting)
    views = sample_views(rng, config.num_views, config.cameras)
    albedo = ProceduralAlbedo(obj.face_part, textures)
    renderer = MeshRenderer(obj.vertices, obj.faces, albedo)
    v_part = vertex_parts(obj.faces, obj.face_part, len(obj.vertices))
    v_normal = vertex_normals(obj.vertices, obj.faces)
    colors = np.zeros((len(obj.vertices), 3))
    for p in np.unique(v_part):
        sel = v_part == p
        colors[sel] = triplanar(textures[p], obj.vertices[sel], v_normal[sel])
    extra = {
        "generator": {
            "name": "lrm-generate",
            "stamp": stamp,
            "seed": config.seed,
            "index": index,
            "primitives": obj.kinds,
            "augmentations": obj.augmentations,
            "textures": [t.kind for t in textures],
        }
    }
    oid = object_id(index)
    write_object_folder(
        Path(config.output), oid, renderer, views, lighting, config.resolution, colors, extra, config.png_compress_level
    )
    return oid


def validate(config: GenerateConfig) -> None:
    """Raise ValueError on settings that cannot work."""
    for name in ("num_objects", "num_views", "workers"):
        if getattr(config, name) < 1:
            raise ValueError(f"GenerateConfig.{name} must be >= 1, got {getattr(config, name)}")
    if config.resolution < 4:
        raise ValueError(f"GenerateConfig.resolution must be >= 4, got {config.resolution}")
    if not 0 <= config.png_compress_level <= 9:
        raise ValueError(f"GenerateConfig.png_compress_level must be in 0..9, got {config.png_compress_level}")


def main(config: GenerateConfig) -> dict[str, Any]:
    """Generate (or finish generating, or merge the shards of) the dataset; return a summary.

    Raises:
        ShardMergeError: merging, and some object is missing (named, with its shard).
    """
    validate(config)
    shard = parse_shard(config.shard)
    root = Path(config.output)
    check_output_dir(root)
    stamp = config_stamp(config)
    ids = [object_id(i) for i in range(config.num_objects)]
    merging = shard is None and bool(read_shard_records(root))
    if shard is None and not merging:
        clean_stale_temporaries(root)
    elif shard is not None:
        clean_own_temporaries(root, shard.owns)
        write_shard_record(root, shard, stamp, finished=False)
    todo = []
    for index in range(config.num_objects):
        if shard is not None and not shard.owns(ids[index]):
            continue
        found = finished_stamp(root, ids[index])
        if found is None:
            todo.append(index)
        elif found != stamp:
            raise ValueError(
                f"{root / ids[index]}: made with a different generator config (stamp {found}, now {stamp}); "
                "use a new --output or the original settings"
            )
    if merging:
        check_merge(root, ids, lambda oid: finished_stamp(root, oid) == stamp, stamp)
        todo = []
    start = time.perf_counter()
    jobs = [(config, index, stamp) for index in todo]
    run_jobs(generate_object, jobs, config.workers, "objects", show_progress=config.progress)
    seconds = time.perf_counter() - start
    if shard is not None:
        write_shard_record(root, shard, stamp, finished=True)
    else:
        write_dataset_json(
            root,
            ids,
            config.holdout_fraction,
            {
                "camera": config.cameras.dataset_record(),
                "generator": {"name": "lrm-generate", "stamp": stamp, "config": recorded_config(config)},
            },
        )
        if merging:
            end_merge(root)
    owned = config.num_objects if shard is None else len(shard.select(ids))
    summary = {
        "output": str(root),
        "objects": owned,
        "rendered": len(todo),
        "skipped_finished": owned - len(todo),
        "seconds": round(seconds, 3),
        "shard": None if shard is None else str(shard),
        "merged": merging,
    }
    if config.progress:
        what = f"shard {shard}: " if shard is not None else "merged the shards: " if merging else ""
        CONSOLE.print(
            f"[green]{root}: {what}{len(todo)} objects rendered, {summary['skipped_finished']} already finished, "
            f"{seconds:.1f} s"
        )
    return summary


def entrypoint() -> None:
    """CLI entry point (`lrm-generate`)."""
    try:
        main(tyro.cli(GenerateConfig))
    except ShardMergeError as err:
        CONSOLE.print(f"[bold red]lrm-generate: {err}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
