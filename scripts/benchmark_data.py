"""Benchmark of `lrm-generate`: objects/min and ms/view, printed as JSON.

    uv run python scripts/benchmark_data.py --num-objects 16 --num-views 32 --resolution 256 --workers 2

Also times one object's pieces (shape drawing, ray casting + shading, PNG writing at several compression levels) in
this process, so that the budget per view can be read off.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro


@dataclass
class BenchmarkDataConfig:
    """Time the procedural data generator."""

    num_objects: int = 16
    """Objects generated in the end-to-end run."""
    num_views: int = 32
    """Views per object."""
    resolution: int = 256
    """Image resolution."""
    workers: int = 2
    """Worker processes for the end-to-end run."""
    seed: int = 0
    """Seed."""
    png_compress_level: int = 1
    """PNG compression level of the end-to-end run."""


def _components(config: BenchmarkDataConfig, tmp: Path) -> dict:
    from lrm_nerfstudio.generate.generate import GenerateConfig
    from lrm_nerfstudio.generate.renderer import (
        MeshRenderer,
        ProceduralAlbedo,
        random_lighting,
        sample_views,
        write_view,
    )
    from lrm_nerfstudio.generate.shapes import make_object
    from lrm_nerfstudio.generate.textures import random_texture

    gcfg = GenerateConfig()
    t_shape, t_render, n_tri, n_views = 0.0, 0.0, 0, 0
    writes = {level: 0.0 for level in (0, 1, 3, 6)}
    sizes = {level: 0 for level in writes}
    for index in range(4):
        rng = np.random.default_rng([config.seed, index])
        t0 = time.perf_counter()
        obj = make_object(rng, gcfg.shapes)
        t_shape += time.perf_counter() - t0
        n_tri += len(obj.faces)
        textures = [random_texture(rng, gcfg.textures) for _ in range(obj.num_parts)]
        renderer = MeshRenderer(obj.vertices, obj.faces, ProceduralAlbedo(obj.face_part, textures))
        light = random_lighting(rng, gcfg.lighting)
        res = config.resolution
        for view in sample_views(rng, 8, gcfg.cameras):
            t0 = time.perf_counter()
            out = renderer.render(view.c2w, view.focal * res, view.focal * res, res / 2, res / 2, res, res, light)
            t_render += time.perf_counter() - t0
            n_views += 1
            for level in writes:
                folder = tmp / f"level{level}"
                for sub in ("images", "depth", "normals"):
                    (folder / sub).mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                write_view(folder, n_views, out, level)
                writes[level] += time.perf_counter() - t0
                sizes[level] += sum(os.path.getsize(p) for p in folder.rglob(f"{n_views:03d}.png"))
    return {
        "shape_ms_per_object": round(1000 * t_shape / 4, 2),
        "triangles_per_object": n_tri // 4,
        "render_ms_per_view": round(1000 * t_render / n_views, 2),
        "png_write_ms_per_view": {str(k): round(1000 * v / n_views, 2) for k, v in writes.items()},
        "png_kb_per_view": {str(k): round(v / n_views / 1e3, 1) for k, v in sizes.items()},
    }


def main(config: BenchmarkDataConfig) -> dict:
    """Run the benchmark and print JSON."""
    from lrm_nerfstudio.generate.generate import GenerateConfig
    from lrm_nerfstudio.generate.generate import main as generate

    with tempfile.TemporaryDirectory() as tmp:
        components = _components(config, Path(tmp))
        t0 = time.perf_counter()
        generate(
            GenerateConfig(
                output=Path(tmp) / "ds",
                num_objects=config.num_objects,
                num_views=config.num_views,
                resolution=config.resolution,
                seed=config.seed,
                workers=config.workers,
                png_compress_level=config.png_compress_level,
                progress=False,
            )
        )
        seconds = time.perf_counter() - t0
    result = {
        "num_objects": config.num_objects,
        "num_views": config.num_views,
        "resolution": config.resolution,
        "workers": config.workers,
        "cpu_count": os.cpu_count(),
        "seconds": round(seconds, 2),
        "objects_per_min": round(60 * config.num_objects / seconds, 1),
        "ms_per_view": round(1000 * seconds / (config.num_objects * config.num_views), 2),
        "note": "end-to-end includes worker start-up (spawn, imports); components are single-process",
        "components": components,
    }
    print(json.dumps(result, indent=2))
    return result


def entrypoint() -> None:
    """CLI entry point."""
    main(tyro.cli(BenchmarkDataConfig))


if __name__ == "__main__":
    entrypoint()
