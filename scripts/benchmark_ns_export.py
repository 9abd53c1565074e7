"""Time each stage of nerfstudio's `ns-export poisson` (or `pointcloud`) on an LRM config; prints JSON to stdout.

Runs nerfstudio's own exporter in this process with its defaults (plus any exporter flags given after the config),
timing the stages by wrapping the nerfstudio functions it calls: loading (`eval_setup`), the point cloud (ray
batches, the model, outlier removal), Poisson and its density trim plus the PLY write, the decimation to
`--target-num-faces`, the UV unwrap (the project's `mesh.ns_texture` stand-in, which an LRM config installs over
nerfstudio's) and the NeRF texture render.

    uv run python scripts/benchmark_ns_export.py outputs/demo/reconstruction/ID/config.yml
    uv run python scripts/benchmark_ns_export.py RUN/config.yml --method pointcloud

`--unwrap-only` times the texture unwrap alone, the project's stand-in against nerfstudio's own function, on a
sphere of `--target-num-faces` faces (default 50 000) at `--num-pixels-per-side` (default 2048). nerfstudio's cost
is linear in the faces (one pass over every texel per 10 faces), so it is timed on `--nerfstudio-faces` faces
and scaled:

    uv run python scripts/benchmark_ns_export.py --unwrap-only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _timed(module: Any, name: str, marks: list[tuple[str, float, float]]) -> None:
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            marks.append((name, start, time.perf_counter()))

    setattr(module, name, wrapper)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def stage_times(config: Path, method: str, output_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Run the exporter once; the seconds of each stage and what it wrote."""
    import torch
    from nerfstudio.exporter import texture_utils
    from nerfstudio.scripts import exporter
    from nerfstudio.utils.rich_utils import CONSOLE

    CONSOLE.file = sys.stderr  # nerfstudio's messages; stdout is the JSON

    from lrm_nerfstudio.training.trainer import install_fast_texture_unwrap

    install_fast_texture_unwrap()  # what loading the LRM config does; done first so that its timer wraps the project's
    marks: list[tuple[str, float, float]] = []
    for name in ("eval_setup", "generate_point_cloud", "get_mesh_from_filename"):
        _timed(exporter, name, marks)
    _timed(texture_utils, "unwrap_mesh_with_xatlas", marks)
    _timed(texture_utils, "export_textured_mesh", marks)
    cls = exporter.ExportPoissonMesh if method == "poisson" else exporter.ExportPointCloud
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # nerfstudio also prints cursor moves; stdout is the JSON
        cls(load_config=config, output_dir=output_dir, **extra).main()
    total = time.perf_counter() - start
    seconds = {name: end - begin for name, begin, end in marks}
    stages: dict[str, float] = {"load": seconds["eval_setup"], "point_cloud": seconds["generate_point_cloud"]}
    if method == "poisson":
        cloud_end = next(end for name, _, end in marks if name == "generate_point_cloud")
        decimate_start = next((begin for name, begin, _ in marks if name == "get_mesh_from_filename"), None)
        stages["poisson_and_save"] = (decimate_start or start + total) - cloud_end
        if "get_mesh_from_filename" in seconds:
            stages["decimate"] = seconds["get_mesh_from_filename"]
        if "export_textured_mesh" in seconds:
            unwrap = seconds.get("unwrap_mesh_with_xatlas", 0.0)
            stages["xatlas_unwrap"] = unwrap
            stages["texture_render_and_save"] = seconds["export_textured_mesh"] - unwrap
    files = {p.name: p.stat().st_size for p in sorted(output_dir.iterdir()) if p.is_file()}
    return {"stages_s": stages, "total_s": total, "files_bytes": files, "torch_threads": torch.get_num_threads()}


def sphere_mesh(num_faces: int, seed: int = 0):
    """An icosphere with `num_faces` of its faces kept (holes, like a decimated marching-cubes surface's charts)."""
    import numpy as np
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=max(1, int(np.ceil(np.log(num_faces / 20) / np.log(4)))))
    keep = np.sort(np.random.default_rng(seed).choice(len(sphere.faces), num_faces, replace=False))
    return trimesh.Trimesh(sphere.vertices, sphere.faces[keep], process=True)


def unwrap_times(num_faces: int, num_pixels: int, nerfstudio_faces: int) -> dict[str, Any]:
    """Seconds of the project's unwrap at `num_faces`, and nerfstudio's measured at `nerfstudio_faces` and
    scaled linearly to `num_faces`."""
    import torch
    from nerfstudio.exporter import texture_utils
    from nerfstudio.utils.rich_utils import CONSOLE

    from lrm_nerfstudio.mesh.ns_texture import unwrap_mesh_with_xatlas

    CONSOLE.file = sys.stderr
    record: dict[str, Any] = {"faces": num_faces, "num_pixels_per_side": num_pixels}
    for name, function, faces in (("project_s", unwrap_mesh_with_xatlas, num_faces),
                                  ("nerfstudio_s", texture_utils.unwrap_mesh_with_xatlas, nerfstudio_faces)):  # fmt: skip
        mesh = sphere_mesh(faces)
        tensors = (torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces),
                   torch.tensor(mesh.vertex_normals, dtype=torch.float32))  # fmt: skip
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            function(*tensors, num_pixels_per_side=num_pixels)
        seconds = time.perf_counter() - start
        if faces != num_faces:
            record[f"nerfstudio_s_at_{faces}_faces"] = seconds
            seconds *= num_faces / faces
        record[name] = seconds
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, nargs="?", help="config.yml of an LRM run or reconstruction")
    parser.add_argument("--unwrap-only", action="store_true", help="time the texture unwrap alone (no config)")
    parser.add_argument("--nerfstudio-faces", type=int, default=500, help="--unwrap-only: faces for nerfstudio's")
    parser.add_argument("--method", choices=("poisson", "pointcloud"), default="poisson")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--num-points", type=int, default=None, help="nerfstudio's --num-points (default: its own)")
    parser.add_argument("--target-num-faces", type=int, default=None, help="poisson: nerfstudio's --target-num-faces")
    parser.add_argument("--num-pixels-per-side", type=int, default=None, help="poisson: texture side")
    args = parser.parse_args(argv)
    extra = {
        key: value
        for key, value in {
            "num_points": args.num_points,
            "target_num_faces": args.target_num_faces,
            "num_pixels_per_side": args.num_pixels_per_side,
        }.items()
        if value is not None
    }
    if args.unwrap_only:
        result = unwrap_times(args.target_num_faces or 50_000, args.num_pixels_per_side or 2048, args.nerfstudio_faces)
    elif args.config is None:
        parser.error("a config.yml is needed (or --unwrap-only)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = args.output_dir or Path(tmp) / "export"
            out.mkdir(parents=True, exist_ok=True)
            result = stage_times(args.config, args.method, out, extra)
    record = {
        "method": "unwrap" if args.unwrap_only else args.method,
        "config": str(args.config),
        "options": extra,
        **result,
        "machine": {
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
